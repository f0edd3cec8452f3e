//! The CUDA half of the ops: teal's PTX module (loaded once per device), the step's metadata uploaded once, and
//! the launches. Buffers are candle's (`CudaStorage`), launched on the device's own stream.

use super::meta::{check_meta, decode_splits, runs, AttnMeta};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId, WrapErr};
use candle_core::Layout;
use candle_core::Result;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "teal_paged_attention";
/// Threads per attention block: 4 warps (TEAL_WARPS in the kernel).
const ATTN_THREADS: u32 = 128;
/// The kernels keep head_dim / 32 values per lane in registers (TEAL_MAX_HEAD_DIM).
const MAX_HEAD_DIM: usize = 256;
/// Queries per prefill run (TEAL_TILE_Q in the kernel).
const PREFILL_RUN: usize = 16;
/// The largest grid y dimension CUDA allows.
const MAX_GRID_Y: usize = 65_535;

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
    /// Tokens alone in their run (decode): the split kernel's items.
    items: CudaSlice<u32>,
    /// Their positions, on the host: the number of splits depends on the longest visible span.
    item_pos: Vec<u32>,
    /// Runs of two or more tokens as (first token, count) pairs: the prefill kernel's blocks.
    runs: CudaSlice<u32>,
    num_runs: usize,
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
    let (mut items, mut prefill) = (vec![], vec![]);
    for (start, len) in runs(meta, PREFILL_RUN) {
        match len {
            1 => items.push(start as u32),
            _ => prefill.extend([start as u32, len as u32]),
        }
    }
    if items.len() > MAX_GRID_Y || prefill.len() / 2 > MAX_GRID_Y {
        candle_core::bail!("paged attention: {} tokens in one step is more than a launch can cover", meta.num_tokens());
    }
    let item_pos = items.iter().map(|&t| meta.token_pos[t as usize]).collect();
    // Never an empty upload: a zero-length copy is refused by some drivers.
    let num_runs = prefill.len() / 2;
    items.push(0);
    prefill.extend([0, 0]);
    Ok(DeviceMeta {
        items: dev.clone_htod(&items)?,
        item_pos,
        runs: dev.clone_htod(&prefill)?,
        num_runs,
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
    /// Local attention: each query sees its last `window` positions only.
    pub window: Option<usize>,
}

/// Attention of `q` (`[tokens, heads, head_dim]`) over the pools; returns `[tokens, heads * head_dim]` values.
/// Decode tokens go to the split kernel (and the merge when split), prefill runs to the tiled kernel; both write
/// disjoint rows of one output.
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
    // 0 = no window in the kernels; a window of 0 (no position visible) never reaches here: configs refuse it.
    let window = match s.window.filter(|&w| w > 0) {
        None => 0u32,
        Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
    };
    if hd > MAX_HEAD_DIM || hd == 0 || nkv == 0 || !nh.is_multiple_of(nkv) || nh > MAX_GRID_Y {
        candle_core::bail!("paged attention: unsupported shape ({nh} heads, {nkv} kv heads, head_dim {hd})");
    }
    let (qs, qe) = contiguous(ql, "query")?;
    let (ks, ke) = contiguous(kl, "key pool")?;
    let (vs, ve) = contiguous(vl, "value pool")?;
    if qe - qs != n * nh * hd || ke - ks != ve - vs || (ke - ks) % (nkv * hd) != 0 {
        candle_core::bail!("paged attention: query or pool sizes do not match the shape");
    }
    let dev = q.device().clone();
    if n == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(dev.alloc_zeros::<f32>(0)?, dev));
    }
    let dm = device_meta(&dev, meta, (ke - ks) / (nkv * hd))?;
    // SAFETY: every element is written: each token is a decode item or in a prefill run (meta::runs covers all).
    let out = unsafe { dev.alloc::<f32>(n * nh * hd)? };
    let args = Args {
        q: q.as_cuda_slice::<f32>()?.slice(qs..qe),
        k: kp.as_cuda_slice::<f32>()?.slice(ks..ke),
        v: vp.as_cuda_slice::<f32>()?.slice(vs..ve),
        dims: [dm.max_blocks, meta.block_size as u32, nh as u32, nkv as u32, hd as u32],
        scale: s.scale,
        window,
    };
    if !dm.item_pos.is_empty() {
        launch_decode(&dev, dm, &args, &out, s)?;
    }
    if dm.num_runs > 0 {
        let f = function(&dev, "teal_attention_prefill")?;
        let cfg = LaunchConfig {
            grid_dim: (nh as u32, dm.num_runs as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&out).arg(&args.q).arg(&args.k).arg(&args.v).arg(&dm.runs);
        b.arg(&dm.token_seq).arg(&dm.token_pos).arg(&dm.block_tables);
        for d in &args.dims {
            b.arg(d);
        }
        b.arg(&args.scale).arg(&args.window);
        // SAFETY: argument types match the kernel's signature; runs, tables and positions were checked on upload.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// One attention call's views and scalars, as the kernels take them.
struct Args<'a> {
    q: CudaView<'a, f32>,
    k: CudaView<'a, f32>,
    v: CudaView<'a, f32>,
    /// max_blocks, block_size, heads, kv heads, head_dim.
    dims: [u32; 5],
    scale: f32,
    window: u32,
}

/// The decode items: the split kernel, then the merge when the items were split.
fn launch_decode(dev: &CudaDevice, dm: &DeviceMeta, a: &Args, out: &CudaSlice<f32>, s: &AttnShape) -> Result<()> {
    let (nh, hd, items) = (s.num_heads, s.head_dim, dm.item_pos.len());
    let (splits, chunk) = decode_splits(&dm.item_pos, s.window.filter(|&w| w > 0), nh);
    let parts = if splits > 1 { items * nh * splits } else { 1 };
    // SAFETY: the split kernel writes every partial (an empty split writes zeros and l = 0) before the merge reads.
    let (part_acc, part_ml) = unsafe { (dev.alloc::<f32>(parts * hd)?, dev.alloc::<f32>(parts * 2)?) };
    let f = function(dev, "teal_attention_split")?;
    let cfg = LaunchConfig {
        grid_dim: (nh as u32, items as u32, splits as u32),
        block_dim: (ATTN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = dev.cuda_stream();
    let chunk = chunk as u32;
    let mut b = stream.launch_builder(&f);
    b.arg(out).arg(&part_acc).arg(&part_ml).arg(&a.q).arg(&a.k).arg(&a.v).arg(&dm.items);
    b.arg(&dm.token_seq).arg(&dm.token_pos).arg(&dm.block_tables);
    for d in &a.dims {
        b.arg(d);
    }
    b.arg(&a.scale).arg(&a.window).arg(&chunk);
    // SAFETY: argument types match the kernel's signature; items, tables and positions were checked on upload.
    unsafe { b.launch(cfg) }.w()?;
    if splits > 1 {
        let f = function(dev, "teal_attention_merge")?;
        let cfg = LaunchConfig { grid_dim: (nh as u32, items as u32, 1), block_dim: (64, 1, 1), shared_mem_bytes: 0 };
        let (nh32, hd32, splits32) = (nh as u32, hd as u32, splits as u32);
        let mut b = stream.launch_builder(&f);
        b.arg(out).arg(&part_acc).arg(&part_ml).arg(&dm.items).arg(&nh32).arg(&hd32).arg(&splits32);
        // SAFETY: argument types match the kernel's signature; the partials were sized for this grid above.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(())
}
