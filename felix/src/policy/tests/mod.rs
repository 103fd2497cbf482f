//! Tests of the policy engine as a whole (unit tests of one module sit beside it, in
//! `MODULE/tests.rs`).

mod golden;
