//! libFuzzer target for both selector parsers: the input is a Calico selector (whole and per line)
//! and, if it is YAML for one Kubernetes label selector or a list of them, felix's selectors. The
//! properties (Calico round trip through `Display`; felix order independence, matching and
//! canonical text) are `node/src/datastore/fuzz_tests/checks.rs`, shared with the in-tree loop.

#![no_main]

use calico_node as node;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/datastore/fuzz_tests/checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::selectors(data));
