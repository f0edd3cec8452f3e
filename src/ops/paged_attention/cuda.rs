//! The CUDA half of the ops: teal's PTX module (loaded once per device), the step's metadata uploaded once, and
//! the launches. Buffers are candle's (`CudaStorage`), launched on the device's own stream.

use super::meta::{check_meta, AttnMeta};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId, WrapErr};
use candle_core::Layout;
use candle_core::Result;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "teal_paged_attention";
/// Threads per attention block: 4 warps (TEAL_WARPS in the kernel).
const ATTN_THREADS: u32 = 128;
/// The kernel keeps head_dim / 32 values per lane in registers (TEAL_MAX_HEAD_DIM).
const MAX_HEAD_DIM: usize = 256;

/// Resolves one kernel, loading the module onto `dev` the first time (candle keeps it per device).
pub fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    static LOADED: OnceLock<Mutex<HashSet<DeviceId>>> = OnceLock::new();
    let fresh = LOADED.get_or_init(Default::default).lock().map(|mut s| s.insert(dev.id())).unwrap_or(false);
    if fresh {
        crate::telemetry::note_kernel_module_load();
    }
    Ok(dev.get_or_load_custom_func(name, MODULE, PTX)?.into_cuda_function())
}

/// The metadata arrays on the device; block tables flattened to `[sequences, max_blocks]`.
pub struct DeviceMeta {
    token_seq: CudaSlice<u32>,
    token_pos: CudaSlice<u32>,
    slot_mapping: CudaSlice<u32>,
    block_tables: CudaSlice<u32>,
    max_blocks: u32,
    pool_slots: usize,
    device: DeviceId,
}

fn upload(dev: &CudaDevice, meta: &AttnMeta, pool_slots: usize) -> Result<DeviceMeta> {
    check_meta(meta, pool_slots)?;
    let max_blocks = meta.block_tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = vec![0u32; meta.block_tables.len().max(1) * max_blocks];
    for (row, table) in flat.chunks_mut(max_blocks).zip(&meta.block_tables) {
        row[..table.len()].copy_from_slice(table);
    }
    Ok(DeviceMeta {
        token_seq: dev.clone_htod(&meta.token_seq)?,
        token_pos: dev.clone_htod(&meta.token_pos)?,
        slot_mapping: dev.clone_htod(&meta.slot_mapping)?,
        block_tables: dev.clone_htod(&flat)?,
        max_blocks: max_blocks as u32,
        pool_slots,
        device: dev.id(),
    })
}

/// The step's metadata on `dev`: uploaded (and checked) by the first layer, reused by the others.
fn device_meta<'a>(dev: &CudaDevice, meta: &'a AttnMeta, pool_slots: usize) -> Result<&'a DeviceMeta> {
    if let Some(cell) = meta.device_copy.cell.get() {
        let m = cell.downcast_ref::<DeviceMeta>().ok_or_else(|| candle_core::Error::Msg("foreign metadata".into()))?;
        if m.pool_slots == pool_slots && m.device == dev.id() {
            return Ok(m);
        }
        candle_core::bail!("attention metadata reused with a different pool or device");
    }
    let m = upload(dev, meta, pool_slots)?;
    let cell = meta.device_copy.cell.get_or_init(|| Box::new(m));
    cell.downcast_ref::<DeviceMeta>().ok_or_else(|| candle_core::Error::Msg("foreign metadata".into()))
}

fn contiguous(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))
}

/// `pool[slot_mapping[t]] = src[t]`, rows of `kv_heads * head_dim` f32.
pub fn write_kv(
    pool: &mut CudaStorage,
    pool_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    meta: &AttnMeta,
) -> Result<()> {
    let n = meta.num_tokens();
    if n == 0 {
        return Ok(());
    }
    let (ps, pe) = contiguous(pool_l, "kv pool")?;
    let (ss, se) = contiguous(src_l, "kv source")?;
    let row = (se - ss) / n;
    if row == 0 || row * n != se - ss || !(pe - ps).is_multiple_of(row) {
        candle_core::bail!("kv source of {} values does not split into {n} rows of the pool's width", se - ss);
    }
    let dev = pool.device().clone();
    let dm = device_meta(&dev, meta, (pe - ps) / row)?;
    let f = function(&dev, "teal_write_kv")?;
    let src = src.as_cuda_slice::<f32>()?.slice(ss..se);
    let mut dst = pool.as_cuda_slice_mut::<f32>()?.slice_mut(ps..pe);
    let row32 = row as u32;
    let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (row.min(256) as u32, 1, 1), shared_mem_bytes: 0 };
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&mut dst).arg(&src).arg(&dm.slot_mapping).arg(&row32);
    // SAFETY: argument types match the kernel's signature; every slot was checked against the pool's rows.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Shapes of one attention call.
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// Attention of `q` (`[tokens, heads, head_dim]`) over the pools; returns `[tokens, heads * head_dim]` values.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &CudaStorage,
    ql: &Layout,
    kp: &CudaStorage,
    kl: &Layout,
    vp: &CudaStorage,
    vl: &Layout,
    meta: &AttnMeta,
    s: &AttnShape,
) -> Result<CudaStorage> {
    let (n, nh, nkv, hd) = (meta.num_tokens(), s.num_heads, s.num_kv_heads, s.head_dim);
    if hd > MAX_HEAD_DIM || nkv == 0 || !nh.is_multiple_of(nkv) || n > 65_535 {
        candle_core::bail!(
            "paged attention: unsupported shape ({nh} heads, {nkv} kv heads, head_dim {hd}, {n} tokens)"
        );
    }
    let (qs, qe) = contiguous(ql, "query")?;
    let (ks, ke) = contiguous(kl, "key pool")?;
    let (vs, ve) = contiguous(vl, "value pool")?;
    if qe - qs != n * nh * hd || ke - ks != ve - vs || (ke - ks) % (nkv * hd) != 0 {
        candle_core::bail!("paged attention: query or pool sizes do not match the shape");
    }
    let dev = q.device().clone();
    let out = if n == 0 {
        dev.alloc_zeros::<f32>(0)?
    } else {
        let dm = device_meta(&dev, meta, (ke - ks) / (nkv * hd))?;
        let f = function(&dev, "teal_paged_attention")?;
        // SAFETY: every element is written by the kernel below.
        let out = unsafe { dev.alloc::<f32>(n * nh * hd)? };
        let (qv, kv, vv) = (
            q.as_cuda_slice::<f32>()?.slice(qs..qe),
            kp.as_cuda_slice::<f32>()?.slice(ks..ke),
            vp.as_cuda_slice::<f32>()?.slice(vs..ve),
        );
        let dims = [dm.max_blocks, meta.block_size as u32, nh as u32, nkv as u32, hd as u32];
        let cfg =
            LaunchConfig { grid_dim: (nh as u32, n as u32, 1), block_dim: (ATTN_THREADS, 1, 1), shared_mem_bytes: 0 };
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&out).arg(&qv).arg(&kv).arg(&vv).arg(&dm.token_seq).arg(&dm.token_pos).arg(&dm.block_tables);
        for d in &dims {
            b.arg(d);
        }
        b.arg(&s.scale);
        // SAFETY: argument types match the kernel's signature; tables and positions were checked on upload.
        unsafe { b.launch(cfg) }.w()?;
        out
    };
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
