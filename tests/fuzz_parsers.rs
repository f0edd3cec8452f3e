//! Property tests for every parser of untrusted bytes: thousands of generated and mutated inputs per parser per
//! run (GGUF headers, safetensors headers, pickles and whole .pth files, images, request JSON, chat templates).
//! Each must end in a value or an error: no panic, and no allocation larger than a cap (this binary's allocator
//! records the largest single request and the peak of live bytes per thread). Seeded: the seed is printed and
//! `TEAL_FUZZ_SEED` replays it; `TEAL_FUZZ_ITERS` runs more. For open-ended runs, see fuzz/ (cargo-fuzz).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the bookkeeping only touches const-initialized thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note_alloc(n: usize) {
    let _ = LIVE.try_with(|l| {
        let live = l.get().saturating_add(n);
        l.set(live);
        let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(n)));
}

fn note_free(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns (largest single allocation, peak live bytes above the start) on this thread.
fn measured(f: impl FnOnce()) -> (usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    LARGEST.with(|m| m.set(0));
    f();
    (LARGEST.with(Cell::get), PEAK.with(Cell::get).saturating_sub(base))
}

fn seed() -> u64 {
    let s = std::env::var("TEAL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("fuzz seed {s} (replay with TEAL_FUZZ_SEED={s})");
    s
}

fn iterations(default: usize) -> usize {
    std::env::var("TEAL_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

const INTERESTING: [u64; 10] = [0, 1, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, 1 << 60, u64::MAX, 32];

/// One random mutation of `input`: bit flips, byte runs, an interesting integer, an insertion, a deletion, a
/// truncation or a splice with itself.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let len = b.len().max(1);
        match rng.random_range(0..7) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            2 if b.len() >= 8 => {
                let i = rng.random_range(0..=b.len() - 8);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let w = if rng.random() { v.to_le_bytes() } else { (v as u32 as u64).to_le_bytes() };
                b[i..i + 8].copy_from_slice(&w);
            }
            3 => {
                let i = rng.random_range(0..=b.len());
                let n = rng.random_range(1..16);
                b.splice(i..i, (0..n).map(|_| rng.random::<u8>()));
            }
            4 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                let n = rng.random_range(1..=(b.len() - i).min(32));
                b.drain(i..i + n);
            }
            5 => b.truncate(rng.random_range(0..len)),
            _ if !b.is_empty() => {
                let (a, c) = (rng.random_range(0..b.len()), rng.random_range(0..b.len()));
                let n = rng.random_range(1..=(b.len() - a.max(c)).clamp(1, 64));
                let chunk: Vec<u8> = b[a..(a + n).min(b.len())].to_vec();
                let end = (c + chunk.len()).min(b.len());
                b[c..end].copy_from_slice(&chunk[..end - c]);
            }
            _ => {}
        }
    }
    b
}

/// Feeds `iters` mutations of the seeds to `parse` on its own thread; no panic, allocations under `cap`.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, iters: usize, cap: usize, parse: fn(&[u8])) {
    let seed = seed();
    let name = name.to_string();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut worst_single, mut worst_peak) = (0, 0);
            for i in 0..iters {
                let base = &seeds[i % seeds.len()];
                let input = if i < seeds.len() { base.clone() } else { mutate(&mut rng, base) };
                let (single, peak) = measured(|| parse(&input));
                assert!(single <= cap && peak <= cap, "{name}: input {i} allocated {single} at once, {peak} at peak");
                worst_single = worst_single.max(single);
                worst_peak = worst_peak.max(peak);
            }
            eprintln!("{name}: {iters} inputs, largest allocation {worst_single} B, peak {worst_peak} B");
        })
        .unwrap()
        .join()
        .expect("a parser panicked (see above)");
}

fn gguf_seed() -> Vec<u8> {
    let mut b = vec![];
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "general.alignment");
    b.extend(4u32.to_le_bytes());
    b.extend(32u32.to_le_bytes());
    string(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["a", "bb", "<s>"] {
        string(&mut b, t);
    }
    string(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    for (name, off) in [("token_embd.weight", 0u64), ("output.weight", 256)] {
        string(&mut b, name);
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend([0u8; 512]);
    b
}

#[test]
fn gguf_headers() {
    fuzz("gguf", vec![gguf_seed()], iterations(20_000), 64 << 20, |b| {
        let _ = teal::models::gguf::parse(b, b.len() as u64);
    });
}

#[test]
fn safetensors_headers() {
    let header = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"__metadata__":{"format":"pt"}}"#;
    let mut seed = (header.len() as u64).to_le_bytes().to_vec();
    seed.extend(header.as_bytes());
    fuzz("safetensors", vec![seed], iterations(20_000), 16 << 20, |b| {
        let _ = teal::models::safetensors_check::check(b, b.len() as u64 + 32);
    });
}

fn pth_seed() -> Vec<u8> {
    let mut main = vec![0x80, 0x02, b'}', b'X', 1, 0, 0, 0, b'w'];
    main.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x02K\x02\x86K\x02K\x01\x86\x89}tRs.");
    let mut b = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
    b.extend([0x80, 0x02, b'K', 0x03, b'.', 0x80, 0x02, b'}', b'.']);
    b.extend(main);
    b.extend(b"\x80\x02(X\x01\x00\x00\x000l.");
    b.extend(4u64.to_le_bytes());
    b.extend([0u8; 16]);
    b
}

#[test]
fn pytorch_checkpoints_and_pickles() {
    let seed = pth_seed();
    assert_eq!(teal::models::pth::read_bytes(&seed).map(|t| t.len()), Ok(1), "the seed is a valid checkpoint");
    fuzz("pth", vec![seed], iterations(20_000), 64 << 20, |b| {
        let _ = teal::models::pth::read_bytes(b);
        let _ = teal::models::pickle::parse(b, 0, Default::default());
    });
}

#[test]
fn images() {
    let mut seeds = vec![];
    for (w, h) in [(3, 2), (16, 16)] {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 7, y as u8 * 11, 3]));
        for f in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let mut out = std::io::Cursor::new(vec![]);
            img.write_to(&mut out, f).unwrap();
            seeds.push(out.into_inner());
        }
    }
    let pre: teal::models::image::Preprocess =
        toml::from_str("resize = 32\ncrop = 24\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]").unwrap();
    let _ = PRE.set(pre);
    fuzz("image", seeds, iterations(5_000), 64 << 20, |b| {
        if let (Ok(img), Some(pre)) = (teal::models::image::decode(b, 1 << 20), PRE.get()) {
            let _ = teal::models::image::preprocess(&img, pre);
        }
    });
}

static PRE: std::sync::OnceLock<teal::models::image::Preprocess> = std::sync::OnceLock::new();

#[test]
fn request_json() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"x"}]}],"max_tokens":5,"stop":["a"],"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2}"#,
        r#"{"model":"m","prompt":[1,2,3],"max_tokens":5,"stop_token_ids":[1,2],"logit_bias":{"1":2},"seed":7}"#,
        r#"{"model":"m","prompt":["a"],"echo":false,"best_of":1,"temperature":0.5,"top_p":0.9,"top_k":-1}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("request json", seeds, iterations(20_000), 16 << 20, |b| {
        let _ = serde_json::from_slice::<teal::api::openai_types::ChatCompletionRequest>(b);
        let _ = serde_json::from_slice::<teal::api::openai_types::CompletionRequest>(b);
    });
}

#[test]
fn chat_templates() {
    let seeds: Vec<Vec<u8>> = [
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
        "{% set x = 'ab' * 3 %}{% for i in range(10) %}{{ x }}{{ i }}{% endfor %}{{ raise_exception('no') if messages|length > 5 }}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("chat template", seeds, iterations(3_000), 64 << 20, |b| {
        let Ok(src) = std::str::from_utf8(b) else { return };
        let Ok(t) = teal::models::chat_template::ChatTemplate::new(src.to_string()) else { return };
        let msgs = vec![
            teal::models::chat_template::ChatMessage {
                role: "user".into(),
                content: "hello".into(),
                ..Default::default()
            },
            teal::models::chat_template::ChatMessage {
                role: "assistant".into(),
                content: "hi".into(),
                ..Default::default()
            },
        ];
        if let Ok(out) = t.render(&msgs, "<s>", "</s>", 1 << 20) {
            assert!(out.len() <= 1 << 20);
        }
    });
}
