//! mbms-py: the PyO3 bindings, the extension module `mbms._core`. The only crate of the
//! workspace that depends on pyo3/numpy. A thin layer: conversion and validation of Python
//! inputs, GIL released around the Rust work, nothing else.
//!
//! The simulator bindings (plant, fast simulator, protocol simulator, safety monitor, load
//! profiles) sit
//! behind the cargo feature `sim`, on in the maturin build (pyproject.toml), so that a
//! binding of the controller alone carries no simulator code.

use pyo3::prelude::*;

mod cell;
mod config;
mod consensus;
mod engine;
mod fastsim;
#[cfg(feature = "sim")]
mod load_profile;
#[cfg(feature = "sim")]
mod monitor;
mod node;
#[cfg(feature = "sim")]
mod plant;
#[cfg(feature = "sim")]
mod scenario;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    cell::register(m)?;
    config::register(m)?;
    engine::register(m)?;
    consensus::register(m)?;
    #[cfg(feature = "sim")]
    fastsim::register(m)?;
    #[cfg(feature = "sim")]
    load_profile::register(m)?;
    #[cfg(feature = "sim")]
    monitor::register(m)?;
    node::register(m)?;
    #[cfg(feature = "sim")]
    plant::register(m)?;
    #[cfg(feature = "sim")]
    scenario::register(m)?;
    Ok(())
}
