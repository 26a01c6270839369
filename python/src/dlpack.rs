//! GPU tensors handed to torch through DLPack (the `cuda` feature): the tensors decoded
//! into GPU memory by `tenpak::gpu::load_artifact` become `DLManagedTensor`s in
//! `"dltensor"` capsules, which `torch.utils.dlpack.from_dlpack` wraps without a copy.
//! Every capsule keeps the whole load's buffers alive (an `Arc`) until torch frees the
//! last tensor. Both sides use GPU 0's primary context, and the load has synchronized its
//! stream before the capsules exist.
//!
//! The DLPack structs are declared here as the DLPack 0.8 header (`dlpack.h`) defines
//! them; unsafe code is confined to this module.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;

use tenpak::dtype::DType;
use tenpak::gpu::GpuTensors;

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What a capsule owns: the shape array it points to and the load's buffers.
struct Owner {
    shape: Vec<i64>,
    _tensors: Arc<GpuTensors>,
}

const KDL_CUDA: i32 = 2;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;
const NAME: &std::ffi::CStr = c"dltensor";

/// Frees a managed tensor made by [`capsule`] (called by the consumer, or by the
/// capsule's destructor when nobody consumed it).
unsafe extern "C" fn deleter(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` and its `manager_ctx` were made by `Box::into_raw` in `capsule` and are
    // freed exactly once: by the consumer, or by `destructor` if it never consumed them.
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx.cast::<Owner>()));
    }
}

unsafe extern "C" fn destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with a live capsule. A consumer renames the capsule
    // "used_dltensor" and takes ownership; only an unconsumed one is freed here.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()).cast::<DLManagedTensor>();
            deleter(m);
        }
    }
}

/// A `"dltensor"` capsule for tensor `name` of `tensors`.
pub fn capsule(py: Python<'_>, tensors: &Arc<GpuTensors>, name: &str) -> PyResult<Py<PyAny>> {
    let missing = || crate::TensorNotFoundError::new_err(format!("{name} is not loaded"));
    let addr = tensors.device_address(name).ok_or_else(missing)?;
    let shape: Vec<i64> = tensors
        .shape(name)
        .ok_or_else(missing)?
        .iter()
        .map(|&d| d as i64)
        .collect();
    let dtype = match tensors.dtype() {
        DType::BF16 => DLDataType {
            code: KDL_BFLOAT,
            bits: 16,
            lanes: 1,
        },
        DType::F16 => DLDataType {
            code: KDL_FLOAT,
            bits: 16,
            lanes: 1,
        },
        DType::F32 => DLDataType {
            code: KDL_FLOAT,
            bits: 32,
            lanes: 1,
        },
    };
    let mut owner = Box::new(Owner {
        shape,
        _tensors: tensors.clone(),
    });
    let managed = Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data: addr as *mut c_void,
            device: DLDevice {
                device_type: KDL_CUDA,
                device_id: 0,
            },
            ndim: owner.shape.len() as i32,
            dtype,
            // The Vec's heap buffer does not move with the Box that holds it.
            shape: owner.shape.as_mut_ptr(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        },
        manager_ctx: std::ptr::null_mut(),
        deleter: Some(deleter),
    });
    let raw = Box::into_raw(managed);
    // SAFETY: `raw` is a valid, uniquely owned DLManagedTensor; the capsule takes it
    // (freed by the consumer through `deleter`, or by `destructor`).
    unsafe {
        (*raw).manager_ctx = Box::into_raw(owner).cast::<c_void>();
        let cap = ffi::PyCapsule_New(raw.cast::<c_void>(), NAME.as_ptr(), Some(destructor));
        if cap.is_null() {
            deleter(raw);
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, cap).unbind())
    }
}
