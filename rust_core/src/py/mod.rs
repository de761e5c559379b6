//! PyO3 bindings: the extension module `mbms._core`. A thin layer: conversion and
//! validation of Python inputs, GIL released around the Rust work, nothing else.

use pyo3::prelude::*;

mod cell;
mod consensus;
mod engine;
mod fastsim;
mod load_profile;
mod node;
mod plant;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    cell::register(m)?;
    engine::register(m)?;
    consensus::register(m)?;
    fastsim::register(m)?;
    load_profile::register(m)?;
    node::register(m)?;
    plant::register(m)?;
    Ok(())
}
