# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Python mirror of files/bpf/erb.h (the shared BPF layout).

tests/unit/test_layout.py parses erb.h and compiles it with gcc to check that
every constant, flag, enum name and struct offset here agrees with the header.
Change erb.h => change this file in the same commit.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes

ERB_LAYOUT_VERSION = 15

ERB_KEY_MAX = 256
ERB_VAL_MAX = 1400
ERB_REPLY_MAX = 1440
ERB_MAX_PROBES = 8
ERB_INFLIGHT_BUCKETS = 65536
ERB_WR_RING = 16
ERB_DEPTH_MAX = 8
ERB_CMD_NAME_MAX = 24
ERB_FILLQ = 256

# struct erb_config.flags
ERB_CFG_ANSWER = 1 << 0
ERB_CFG_FILL = 1 << 1
ERB_CFG_SET_FAST = 1 << 2
ERB_CFG_KMOD = 1 << 3

# enum erb_entry_state
ERB_ENTRY_EMPTY = 0
ERB_ENTRY_VALID = 1
ERB_ENTRY_TOMB = 2

# enum erb_entry_type
ERB_TYPE_STRING = 0
ERB_TYPE_HASH = 1
ERB_TYPE_HASH_UNVERIFIED = 2
ERB_TYPE_STRING_UNVERIFIED = 3
ERB_TYPE_NIL = 4

# enum erb_pstate
ERB_P_TYPE = 0
ERB_P_NUM = 1
ERB_P_LINE = 2
ERB_P_BULK = 3
ERB_P_LF = 4

# struct erb_flow.flags
ERB_FLOW_SYN = 1 << 0
ERB_FLOW_EST = 1 << 1
ERB_FLOW_UNTRACKED = 1 << 2
ERB_FLOW_MULTI = 1 << 3
ERB_FLOW_SUBSCRIBED = 1 << 4
ERB_FLOW_DB_NONZERO = 1 << 5
ERB_FLOW_AUTHED = 1 << 6
ERB_FLOW_TS = 1 << 7
ERB_FLOW_C_FIN = 1 << 8
ERB_FLOW_S_FIN = 1 << 9
ERB_FLOW_WR_OVERFLOW = 1 << 10
ERB_FLOW_ANSWERED = 1 << 11
ERB_FLOW_WIN = 1 << 12
ERB_FLOW_CLOSED = 1 << 13
ERB_FLOW_C_WSCALE = 1 << 14
ERB_FLOW_HELLO = 1 << 15
ERB_FLOW_WATCH = 1 << 16
ERB_FLOW_PUSHES = 1 << 17
ERB_FLOW_OOO = 1 << 18
ERB_FLOW_TSCLK = 1 << 19
ERB_FLOW_RESP2 = 1 << 20
ERB_FLOW_RESP3 = 1 << 21

# struct erb_global.ctl
ERB_CTL_DRAIN = 1 << 0
ERB_CTL_KMOD = 1 << 1

# struct erb_cmd_spec.flags
ERB_CMD_WRITE = 1 << 0
ERB_CMD_KEYS_UNKNOWN = 1 << 1
ERB_CMD_FLUSH = 1 << 2
ERB_CMD_GET = 1 << 3
ERB_CMD_SET = 1 << 4
ERB_CMD_MULTI = 1 << 5
ERB_CMD_EXEC = 1 << 6
ERB_CMD_SUBSCRIBE = 1 << 7
ERB_CMD_SELECT = 1 << 8
ERB_CMD_AUTH = 1 << 9
ERB_CMD_RESET = 1 << 10
ERB_CMD_UNTRACK = 1 << 11
ERB_CMD_KEYSPACE = 1 << 12
ERB_CMD_WATCH = 1 << 13
ERB_CMD_PUBLISH = 1 << 14

# Symbolic names used by redis_commands.py ("WRITE" -> ERB_CMD_WRITE).
CMD_FLAGS = {
    'WRITE': ERB_CMD_WRITE,
    'KEYS_UNKNOWN': ERB_CMD_KEYS_UNKNOWN,
    'FLUSH': ERB_CMD_FLUSH,
    'GET': ERB_CMD_GET,
    'SET': ERB_CMD_SET,
    'MULTI': ERB_CMD_MULTI,
    'EXEC': ERB_CMD_EXEC,
    'SUBSCRIBE': ERB_CMD_SUBSCRIBE,
    'SELECT': ERB_CMD_SELECT,
    'AUTH': ERB_CMD_AUTH,
    'RESET': ERB_CMD_RESET,
    'UNTRACK': ERB_CMD_UNTRACK,
    'KEYSPACE': ERB_CMD_KEYSPACE,
    'WATCH': ERB_CMD_WATCH,
    'PUBLISH': ERB_CMD_PUBLISH,
}

# enum erb_stat, in order: index i of erb_stats is STAT_NAMES[i]
# (the enumerator name without ERB_STAT_, lower case).
STAT_NAMES = (
    'rx_packets',
    'hit',
    'miss',
    'retransmit_answer',
    'pass_no_flow',
    'pass_not_single',
    'pass_out_of_order',
    'pass_outstanding',
    'pass_unacked',
    'pass_state',
    'pass_untracked',
    'pass_too_big',
    'pass_disabled',
    'drop_overlap',
    'invalidate',
    'flush',
    'fill',
    'fill_skipped',
    'cmds_passed',
    'replies',
    'corrected_in',
    'corrected_out',
    'flow_new',
    'flow_end',
    'flow_full',
    'parse_error',
    'drop_out_of_order',
    'flow_adopted',
    'untracked_write',
    'cache_full',
    'pass_no_room',
    'set_fast',
    'set_pass_queue_full',
    'set_pass_busy',
    'hold',
    'ts_clamped',
    'answer_resent',
    'ack_held',
    'flow_given_up',
    'pass_ooo',
    'pass_client_limit',
    'unseen_passed',
    'reply_unmatched',
    'hold_waited',
    'evict',
    'pipelined',
    'pipelined_cmds',
    'hold_busy',
    'parked',
    'ooo_kept',
    'ooo_resumed',
    'fill_hash',
    'reanswer_parked',
    'reanswer_no_copy',
    'syn_kept',
    'fill_get',
    'fill_nil',
    'hit_nil',
    'mget',
)
ERB_STAT_MAX = len(STAT_NAMES)

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
s16 = ctypes.c_int16
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64


class ErbConfig(ctypes.Structure):
    _fields_ = [
        ('layout_version', u32),
        ('redis_port', u16),
        ('max_key_len', u16),
        ('max_value_len', u16),
        ('max_probes', u16),
        ('cache_entries', u32),
        ('hash_prime', u32),
        ('require_auth', u32),
        ('flags', u32),
    ]


class ErbEntry(ctypes.Structure):
    _fields_ = [
        ('lock', u32),
        ('ver', u32),
        ('state', u16),
        ('type', u16),
        ('hash', u32),
        ('gen', u32),
        ('klen', u16),
        ('vlen', u16),
        ('wseq', u64),
        ('ref', u32),
        ('slot', u32),
        ('key', ctypes.c_char * ERB_KEY_MAX),
        ('val', ctypes.c_char * ERB_VAL_MAX),
    ]


class ErbFlowKey(ctypes.Structure):
    _fields_ = [
        ('saddr', u32),
        ('daddr', u32),
        ('sport', u16),
        ('dport', u16),
    ]


class ErbParser(ctypes.Structure):
    _fields_ = [
        ('state', u32),
        ('num', u32),
        ('bulk_left', u32),
        ('depth', u32),
        ('left', u32 * ERB_DEPTH_MAX),
        ('type', u8),
        ('neg', u8),
        ('top_type', u8),
        ('line_ok', u8),
        ('line_len', u32),
        ('argc', u32),
        ('argi', u32),
        ('arg_hash', u32),
        ('arg_len', u32),
        ('cmd_hash', u32),
        ('cmd_flags', u32),
        ('first_key', s32),
        ('last_key', s32),
        ('key_step', u32),
        ('arg_uhash', u32),
        ('num_arg', u32),
        ('num_ok', u32),
        ('num_len', u32),
        ('resync', u32),
    ]


class ErbSeqadj(ctypes.Structure):
    _fields_ = [
        ('pos', u32),
        ('off_before', s32),
        ('off_after', s32),
    ]


class ErbBucket(ctypes.Structure):
    """struct erb_bucket: a key-hash bucket's lock, passed-write count and untracked-write fence."""
    _fields_ = [
        ('lock', u32),
        ('inflight', u32),
        ('fence_ns', ctypes.c_uint64),
    ]


class ErbWr(ctypes.Structure):
    _fields_ = [
        ('idx', u32),
        ('bucket', u32),
    ]


class BpfTimer(ctypes.Structure):
    """struct bpf_timer (uapi linux/bpf.h): opaque, 16 bytes, 8-aligned."""
    _fields_ = [('opaque', ctypes.c_uint64 * 2)]


class ErbFlow(ctypes.Structure):
    _fields_ = [
        ('adj_seq', u32),
        ('flags', u32),
        ('c_nxt', u32),
        ('s_nxt', u32),
        ('s_win', u32),
        ('s_tsval', u32),
        ('c', ErbSeqadj),
        ('s', ErbSeqadj),
        ('cmds', u32),
        ('replies', u32),
        ('auth_idx', u32),
        ('fill_idx', u32),
        ('last_req_seq', u32),
        ('last_req_len', u32),
        ('last_rep_seq', u32),
        ('last_rep_len', u32),
        ('c_ack', u32),
        ('c_mss', u32),
        ('c_wshift', u32),
        ('c_win', u32),
        ('gap_lo', u32),
        ('gap_hi', u32),
        ('hold_wseq', u64),
        ('hold_end', u32),
        ('ts_base', u32),
        ('ts_last', u32),
        ('wr_mask', u32),
        ('c_isn', u32),
        ('pad', u32),
        ('wr', ErbWr * ERB_WR_RING),
        ('req', ErbParser),
        ('rep', ErbParser),
    ]


class ErbFlowGc(ctypes.Structure):
    """A closed flow's deletion timer (erb_flow_gc), apart from the flow since layout 15."""
    _fields_ = [('timer', BpfTimer)]


class ErbAux(ctypes.Structure):
    _fields_ = [
        ('fill_hash', u32),
        ('fill_bucket', u32),
        ('fill_klen', u16),
        ('fill_vlen', u16),
        ('last_rep_off', u16),
        ('last_rep_len', u16),
        ('fill_epoch', u32),
        ('fill_gen', u32),
        ('fill_key', ctypes.c_char * ERB_KEY_MAX),
        ('fill_val', ctypes.c_char * ERB_VAL_MAX),
        ('last_rep', ctypes.c_char * ERB_REPLY_MAX),
        ('fill_type', u32),
    ]


class ErbGlobal(ctypes.Structure):
    _fields_ = [
        ('cache_gen', u32),
        ('overflow', u32),
        ('ctl', u32),
        ('rmod_pid', u32),
        ('untracked_wr_ns', u64),
        ('write_seq', u64),
        ('applied_seq', u64),
        ('ordered_until_ns', u64),
        ('pad', u64 * 2),
        ('fillq_head', u32),
        ('fillq_pad', u32),
        ('fillq', u64 * ERB_FILLQ),
    ]


class ErbCmdSpec(ctypes.Structure):
    _fields_ = [
        ('flags', u32),
        ('first_key', s16),
        ('last_key', s16),
        ('step', u16),
        ('pad', u16),
    ]


ERB_PARK_FRAME_MAX = 1600


class ErbPark(ctypes.Structure):
    """A held segment parked in erb_parked for the agent to replay (not layout-versioned)."""
    _fields_ = [
        ('bound', u64),
        ('ts_ns', u64),
        ('ifindex', u32),
        ('rxq', u32),
        ('len', u32),
        ('pad', u32),
        ('frame', u8 * ERB_PARK_FRAME_MAX),
    ]


# C struct name -> mirror, for the layout test and the loader's checks.
ERB_OOO_MAX = 2048


class ErbOoo(ctypes.Structure):
    """Out-of-order client bytes kept for the parser (erb_ooo, by flow key)."""
    _fields_ = [
        ('seq', u32),
        ('len', u32),
        ('data', u8 * (2 * ERB_OOO_MAX)),
    ]


STRUCTS = {
    'erb_config': ErbConfig,
    'erb_entry': ErbEntry,
    'erb_flow_key': ErbFlowKey,
    'erb_parser': ErbParser,
    'erb_seqadj': ErbSeqadj,
    'erb_bucket': ErbBucket,
    'erb_wr': ErbWr,
    'erb_flow': ErbFlow,
    'erb_flow_gc': ErbFlowGc,
    'erb_aux': ErbAux,
    'erb_global': ErbGlobal,
    'erb_cmd_spec': ErbCmdSpec,
    'erb_park': ErbPark,
    'erb_ooo': ErbOoo,
}

# BPF map types used by erb.bpf.o (uapi enum bpf_map_type).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_F_MMAPABLE = 1 << 10

# The maps of erb.bpf.o whose layout the loader knows (docs/CONTRACTS.md):
# name -> (map type, key size, value size).  max_entries is load-time config.
MAPS = {
    'erb_cache': (BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(ErbEntry)),
    'erb_tags': (BPF_MAP_TYPE_ARRAY, 4, 8),
    'erb_flows': (BPF_MAP_TYPE_HASH, ctypes.sizeof(ErbFlowKey), ctypes.sizeof(ErbFlow)),
    'erb_flow_gc': (BPF_MAP_TYPE_HASH, ctypes.sizeof(ErbFlowKey), ctypes.sizeof(ErbFlowGc)),
    'erb_aux': (BPF_MAP_TYPE_HASH, ctypes.sizeof(ErbFlowKey), ctypes.sizeof(ErbAux)),
    'erb_ooo': (BPF_MAP_TYPE_HASH, ctypes.sizeof(ErbFlowKey), ctypes.sizeof(ErbOoo)),
    'erb_buckets': (BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(ErbBucket)),
    'erb_global': (BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(ErbGlobal)),
    'erb_cmds': (BPF_MAP_TYPE_HASH, 4, ctypes.sizeof(ErbCmdSpec)),
    'erb_stats': (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8),
}

XDP_PROG = 'erb_xdp'
TC_PROG = 'erb_tc_egress'
