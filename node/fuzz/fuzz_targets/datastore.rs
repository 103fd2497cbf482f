//! libFuzzer target for the datastore decoders: bytes -> UTF-8 (lossy) -> `parse_yaml` and
//! `ClusterState::from_yaml` -> the calculation step for a few nodes -> felix's policy compiler and
//! renderer. The properties are `node/src/datastore/fuzz_tests/checks.rs`, which the in-tree
//! mutation loop checks too.

#![no_main]

use calico_node as node;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/datastore/fuzz_tests/checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::datastore(data));
