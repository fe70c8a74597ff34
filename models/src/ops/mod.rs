//! Kernels: custom ops over CPU storage (and their device-generic twins) that the layers and the
//! trainer's optimiser call, apart from the layers themselves.

pub mod adamw;
