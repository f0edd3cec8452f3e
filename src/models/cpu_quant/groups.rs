//! The row-group layout: 16 weight rows interleaved block by block, so that one 64-byte vector holds 4 weights
//! of each of 16 rows and a `vpdpbusd` against 4 broadcast activation bytes advances 16 dot products at once
//! (x86_groups.rs). Each lane then sums a whole block of one row by itself: no lanes to add up across, and the
//! block's scales are applied to 16 rows with one vector multiply. The bytes are the row-major blocks moved,
//! nothing rounded or dropped (the 8-bit formats' quants stored `q + 128`, the unsigned operand), so a matrix
//! turns back into row-major blocks exactly.
//!
//! Per group of 16 rows and per block, in order:
//! - the quants: for each 4 bytes `k` of a block's quant bytes, the 16 rows' bytes `4k..4k + 4` side by side
//!   (64 bytes);
//! - the block headers field by field: the 16 rows' first field (f16 for Q4_1 and Q8_0, f32 for Q4F and Q8S),
//!   then the 16 rows' second field (Q4_1, Q4F: the minimum; Q8S: the second 16 weights' scale).

use super::layout::{Format, QK};

/// Rows per group.
pub(super) const GROUP: usize = 16;

/// Bytes of one header field of `format` (its headers are 1 or 2 fields of this width).
pub(super) const fn field_bytes(format: Format) -> usize {
    match format {
        Format::Q4_1 | Format::Q8_0 => 2,
        Format::Q4F | Format::Q8S => 4,
    }
}

/// The byte a quant is stored as: `q + 128` for the signed 8-bit formats, as it is for the nibbles.
fn flip(format: Format) -> u8 {
    if matches!(format, Format::Q8_0 | Format::Q8S) {
        0x80
    } else {
        0
    }
}

/// Where row `i`'s block moves: its quant bytes `4k..4k + 4` to `4 * (16 k + i)`, header field `f` to
/// `quants * 16 + width * (16 f + i)`, within the group's block.
fn moves(format: Format) -> impl Fn(usize, usize) -> usize {
    let (header, width) = (format.header_bytes(), field_bytes(format));
    let quants = format.block_bytes() - header;
    move |i, byte| {
        if byte < header {
            quants * GROUP + width * (GROUP * (byte / width) + i) + byte % width
        } else {
            let q = byte - header;
            4 * (GROUP * (q / 4) + i) + q % 4
        }
    }
}

/// Row-major blocks (`rows` a multiple of 16, `blocks` per row) in the group layout.
pub(super) fn interleave(format: Format, data: &[u8], blocks: usize) -> Vec<u8> {
    let (bytes, to, flip) = (format.block_bytes(), moves(format), flip(format));
    let header = format.header_bytes();
    let mut out = vec![0u8; data.len()];
    for (r, row) in data.chunks_exact(blocks * bytes).enumerate() {
        let (g, i) = (r / GROUP, r % GROUP);
        for (b, block) in row.chunks_exact(bytes).enumerate() {
            let base = (g * blocks + b) * GROUP * bytes;
            for (byte, &v) in block.iter().enumerate() {
                out[base + to(i, byte)] = if byte < header { v } else { v ^ flip };
            }
        }
    }
    out
}

/// Row `r`'s blocks, row-major, out of the group layout.
pub(super) fn row_blocks(format: Format, data: &[u8], blocks: usize, r: usize) -> Vec<u8> {
    let (bytes, from, flip) = (format.block_bytes(), moves(format), flip(format));
    let header = format.header_bytes();
    let (g, i) = (r / GROUP, r % GROUP);
    let mut out = Vec::with_capacity(blocks * bytes);
    for b in 0..blocks {
        let base = (g * blocks + b) * GROUP * bytes;
        out.extend((0..bytes).map(|byte| data[base + from(i, byte)] ^ if byte < header { 0 } else { flip }));
    }
    out
}

/// Whether a `[rows, cols]` matrix can take the group layout.
pub(super) fn fits(rows: usize, cols: usize) -> bool {
    rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_moves_every_byte_and_back() {
        for format in [Format::Q4_1, Format::Q4F, Format::Q8_0, Format::Q8S] {
            let (rows, blocks) = (32, 3);
            let data: Vec<u8> = (0..rows * blocks * format.block_bytes()).map(|i| (i * 7 + i / 251) as u8).collect();
            let g = interleave(format, &data, blocks);
            let back: Vec<u8> = (0..rows).flat_map(|r| row_blocks(format, &g, blocks, r)).collect();
            assert_eq!(back, data, "{format:?}");
            // Row 1's first quant bytes sit in the second lane of the first vector.
            let h = format.header_bytes();
            assert_eq!(
                g[4..8],
                data[blocks * format.block_bytes() + h..][..4].iter().map(|v| v ^ flip(format)).collect::<Vec<_>>()[..]
            );
        }
    }
}
