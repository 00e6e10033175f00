//! weft control plane.
#![forbid(unsafe_code)]
