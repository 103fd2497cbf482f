//! UPDATE packing.
