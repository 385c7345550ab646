//! Launch providers, one folder each.

pub mod skypilot;
