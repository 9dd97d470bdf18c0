# -*- coding: utf-8 -*-
"""DOCUMENTATION of erb.booster.bpf, erb.booster.info and erb.booster.kmod agrees with
each module's ARGUMENT_SPEC (what ansible-test validate-modules checks, offline)."""

import os
import sys

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.modules import bpf, info, kmod  # noqa: E402


@pytest.mark.parametrize('module', [bpf, info, kmod], ids=['bpf', 'info', 'kmod'])
def test_doc_matches_argument_spec(module):
    doc = yaml.safe_load(module.DOCUMENTATION)
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)
    options = doc['options']
    spec = module.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, s in spec.items():
        o = options[name]
        assert o.get('type', 'str') == s.get('type', 'str'), name
        assert o.get('default') == s.get('default'), name
        assert bool(o.get('required', False)) == bool(s.get('required', False)), name
        assert o.get('choices') == s.get('choices'), name
    assert doc['attributes']['check_mode']['support'] == 'full'
