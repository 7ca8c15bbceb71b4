//! Decoding of the two image-record encodings into float arrays.
//!
//! * msgpack variant: a msgpack map `{str field: array}` where each array is a msgpack-numpy map
//!   with BINARY keys `nd`, `type` (numpy dtype string such as `'<f2'`), `kind`, `shape`, `data`
//!   (C-order bytes).
//! * compressed variant: the bytes of an `np.savez_compressed` zip holding `<field>.npy` members.
//!
//! Both are reduced to [`RawArray`] (dtype + shape + bytes) and widened to `f32` in one place.
//! Errors are plain strings; the caller wraps them with the db path and record key.

use std::borrow::Cow;
use std::io::{Cursor, Read};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rmpv::ValueRef;

/// Element type an array was stored with (values are always handed out as f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F16,
    F32,
    F64,
}

impl FloatDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Little-endian numpy dtype string (`'<f2'`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "<f2",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
        }
    }
}

/// A decoded array: C-order values widened to f32, with the shape and dtype it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: FloatDtype,
}

/// One undecoded array: numpy dtype, shape and C-order element bytes.
pub(crate) struct RawArray<'a> {
    pub dtype: FloatDtype,
    /// Byte order of the stored elements (numpy `'>'`).
    pub big_endian: bool,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl RawArray<'_> {
    /// Elements per leading-axis row (1 for a 1-d array).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Number of leading-axis rows (1 for a 0-d array).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The first `rows` rows (clamped to what is stored) widened to f32.
    pub fn prefix_f32(&self, rows: usize) -> Vec<f32> {
        let n = rows.min(self.rows()) * self.row_len();
        let width = self.dtype.size();
        widen(self.dtype, self.big_endian, &self.data[..n * width])
    }

    /// The whole array as an owned [`NdArray`].
    pub fn to_nd(&self) -> NdArray {
        NdArray {
            shape: self.shape.clone(),
            data: self.prefix_f32(self.rows()),
            dtype: self.dtype,
        }
    }
}

/// Converts packed elements to f32; the bytes may be unaligned (they live inside LMDB pages or a
/// decompressed buffer), so they are copied into an aligned buffer first, then bulk-converted.
fn widen(dtype: FloatDtype, big_endian: bool, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        FloatDtype::F16 => {
            let mut bits: Vec<u16> = copy_aligned(bytes);
            fix_order(&mut bits, big_endian, u16::from_be, u16::from_le);
            let halves: &[f16] = bytemuck::cast_slice(&bits);
            let mut out = vec![0f32; halves.len()];
            halves.convert_to_f32_slice(&mut out);
            out
        }
        FloatDtype::F32 => {
            let mut bits: Vec<u32> = copy_aligned(bytes);
            fix_order(&mut bits, big_endian, u32::from_be, u32::from_le);
            bits.into_iter().map(f32::from_bits).collect()
        }
        FloatDtype::F64 => {
            let mut bits: Vec<u64> = copy_aligned(bytes);
            fix_order(&mut bits, big_endian, u64::from_be, u64::from_le);
            bits.into_iter().map(|b| f64::from_bits(b) as f32).collect()
        }
    }
}

/// Copies packed bytes into a freshly allocated (hence aligned) buffer in one `memcpy`.
fn copy_aligned<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let mut out = vec![T::zeroed(); bytes.len() / size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(bytes);
    out
}

fn fix_order<T: Copy>(v: &mut [T], big_endian: bool, from_be: fn(T) -> T, from_le: fn(T) -> T) {
    let f = if big_endian { from_be } else { from_le };
    for x in v.iter_mut() {
        *x = f(*x);
    }
}

/// Parses a numpy dtype string (`'<f2'`, `'=f4'`, `'>f8'`, ...); only float dtypes occur in
/// image dbs.
fn parse_dtype(s: &str) -> Result<(FloatDtype, bool), String> {
    let (order, rest) = match s.chars().next() {
        Some(c @ ('<' | '>' | '=' | '|')) => (c, &s[1..]),
        _ => ('=', s),
    };
    let dtype = match rest {
        "f2" | "e" => FloatDtype::F16,
        "f4" | "f" => FloatDtype::F32,
        "f8" | "d" => FloatDtype::F64,
        _ => {
            return Err(format!(
                "unsupported array dtype '{s}' (expected float16/32/64)"
            ));
        }
    };
    let big_endian = order == '>' || (order == '=' && cfg!(target_endian = "big"));
    Ok((dtype, big_endian))
}

/// Checks that `data` holds exactly `prod(shape)` elements.
fn checked<'a>(
    dtype: FloatDtype,
    big_endian: bool,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
) -> Result<RawArray<'a>, String> {
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("array shape {shape:?} overflows"))?;
    if data.len() != expected {
        return Err(format!(
            "array of shape {shape:?} and dtype {} needs {expected} bytes, record has {}",
            dtype.name(),
            data.len()
        ));
    }
    Ok(RawArray {
        dtype,
        big_endian,
        shape,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// msgpack + msgpack-numpy

/// The fields of a msgpack image record, in stored order.
pub(crate) fn msgpack_arrays(mut bytes: &[u8]) -> Result<Vec<(String, RawArray<'_>)>, String> {
    let value = rmpv::decode::read_value_ref(&mut bytes)
        .map_err(|e| format!("not a msgpack value: {e}"))?;
    let ValueRef::Map(fields) = value else {
        return Err("msgpack record is not a map".into());
    };
    let mut out = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let name = match key {
            ValueRef::String(s) => s.into_str().ok_or("field name is not UTF-8")?.to_string(),
            ValueRef::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            _ => return Err("msgpack record has a non-string field name".into()),
        };
        let array = msgpack_numpy_array(value).map_err(|e| format!("field '{name}': {e}"))?;
        out.push((name, array));
    }
    Ok(out)
}

/// One msgpack-numpy array map (`{b'nd': True, b'type': .., b'kind': .., b'shape': .., b'data': ..}`).
fn msgpack_numpy_array(value: ValueRef<'_>) -> Result<RawArray<'_>, String> {
    let ValueRef::Map(entries) = value else {
        return Err("not a msgpack-numpy array map".into());
    };
    let (mut nd, mut dtype, mut shape, mut data) = (None, None, None, None);
    for (key, value) in entries {
        // msgpack-numpy writes binary keys; accept str keys too (other packers).
        let key: &[u8] = match &key {
            ValueRef::Binary(b) => b,
            ValueRef::String(s) => s.as_bytes(),
            _ => continue,
        };
        match key {
            b"nd" => nd = Some(matches!(value, ValueRef::Boolean(true))),
            b"type" => {
                dtype = Some(match value {
                    ValueRef::String(s) => s.into_str().ok_or("dtype is not UTF-8")?.to_string(),
                    ValueRef::Binary(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => return Err("dtype is not a string".into()),
                })
            }
            b"shape" => {
                let ValueRef::Array(dims) = value else {
                    return Err("shape is not a list".into());
                };
                let dims: Option<Vec<usize>> = dims
                    .iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect();
                shape = Some(dims.ok_or("shape holds a non-integer")?);
            }
            b"data" => match value {
                ValueRef::Binary(b) => data = Some(b),
                _ => return Err("data is not binary".into()),
            },
            _ => {}
        }
    }
    if nd != Some(true) {
        return Err("not an ndarray (msgpack-numpy 'nd' is not true)".into());
    }
    let dtype = dtype.ok_or("missing 'type'")?;
    let (dtype, big_endian) = parse_dtype(&dtype)?;
    checked(
        dtype,
        big_endian,
        shape.ok_or("missing 'shape'")?,
        Cow::Borrowed(data.ok_or("missing 'data'")?),
    )
}

// ---------------------------------------------------------------------------------------------
// np.savez_compressed

/// Reads member `<field>.npy` of an npz archive; `Ok(None)` when the archive has no such member.
pub(crate) fn npz_array(bytes: &[u8], field: &str) -> Result<Option<RawArray<'static>>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not an npz (zip) archive: {e}"))?;
    let member = format!("{field}.npy");
    let mut file = match archive.by_name(&member) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("npz member {member}: {e}")),
    };
    // The declared size only pre-sizes the buffer; a lying header cannot make us allocate more
    // than the compressed data actually inflates to.
    let mut npy = Vec::with_capacity(usize::try_from(file.size()).unwrap_or(0).min(1 << 30));
    file.read_to_end(&mut npy)
        .map_err(|e| format!("npz member {member}: {e}"))?;
    npy_array(npy)
        .map(Some)
        .map_err(|e| format!("{member}: {e}"))
}

/// Parses one `.npy` file (header via npyz, elements converted here so float16 needs no npyz
/// feature).
fn npy_array(npy: Vec<u8>) -> Result<RawArray<'static>, String> {
    let mut cursor = Cursor::new(&npy[..]);
    let header =
        npyz::NpyHeader::from_reader(&mut cursor).map_err(|e| format!("bad npy header: {e}"))?;
    let start = usize::try_from(cursor.position()).map_err(|e| e.to_string())?;
    let npyz::DType::Plain(type_str) = header.dtype() else {
        return Err("structured npy arrays are not supported".into());
    };
    if header.order() == npyz::Order::Fortran && header.shape().len() > 1 {
        return Err("Fortran-order npy arrays are not supported".into());
    }
    let (dtype, big_endian) = parse_dtype(&type_str.to_string())?;
    let shape: Option<Vec<usize>> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect();
    let shape = shape.ok_or("npy shape does not fit in memory")?;
    let mut data = npy;
    data.drain(..start);
    checked(dtype, big_endian, shape, Cow::Owned(data))
}

/// Every `.npy` member of an npz archive, in archive order, named without the extension.
pub(crate) fn npz_all(bytes: &[u8]) -> Result<Vec<(String, RawArray<'static>)>, String> {
    let archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not an npz (zip) archive: {e}"))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.strip_suffix(".npy").map(str::to_string))
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(array) = npz_array(bytes, &name)? {
            out.push((name, array));
        }
    }
    Ok(out)
}
