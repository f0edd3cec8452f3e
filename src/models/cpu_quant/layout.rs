//! The block layouts the kernels run: which bytes a block of 32 weights takes, for every module here to share.

/// Weights per block in every layout.
pub(super) const QK: usize = 32;

/// The block layouts this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// f16 scale, f16 minimum, 16 bytes of nibbles (20 bytes per 32 weights): GGUF's Q4_1 as it is.
    Q4_1,
    /// f32 scale, f32 minimum, 16 bytes of nibbles (24 bytes): Q4_K's sub-blocks.
    Q4F,
    /// f16 scale, 32 signed bytes (34 bytes): GGUF's Q8_0 as it is.
    Q8_0,
    /// an f32 scale for each 16 weights, 32 signed bytes (40 bytes): Q6_K's sub-blocks.
    Q8S,
}

impl Format {
    pub(crate) const fn block_bytes(self) -> usize {
        self.header_bytes() + if matches!(self, Format::Q4_1 | Format::Q4F) { QK / 2 } else { QK }
    }

    /// Layouts of GGUF's K-quants, whose activations are quantized per 256 values as ggml's Q8_K.
    pub(super) const fn k_quant(self) -> bool {
        matches!(self, Format::Q4F | Format::Q8S)
    }

    pub(super) const fn header_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 4,
            Format::Q8_0 => 2,
            Format::Q4F | Format::Q8S => 8,
        }
    }
}
