//! A BGP-4 speaker for calico-rs.
#![doc = "RFCs: 4271, 4760, 6793, 2918, 4724, 4456, 7606, 2385, 5082, 1997, 8092."]

pub mod wire;
