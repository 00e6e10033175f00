//! weft data plane.
#![deny(unsafe_code)]
