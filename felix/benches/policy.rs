//! Policy benchmark (placeholder while the policy engine is being written).
fn main() {}
