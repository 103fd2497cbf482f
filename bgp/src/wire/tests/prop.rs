//! Randomized round trips and mutation fuzzing.
