//! Which NVML device is CUDA's `cuda:N`. NVML numbers GPUs in PCI bus order over the whole machine; CUDA numbers
//! only the GPUs `CUDA_VISIBLE_DEVICES` lets it see, in `CUDA_DEVICE_ORDER` (fastest first by default). Budgets
//! must read the GPU the slot actually runs on, so the match is by UUID: the driver's UUID of the ordinal when
//! teal is built with CUDA (exact), else the visible-devices list read the way CUDA reads it.

/// The NVML index (position in `nvml_uuids`, NVML's own order) of CUDA ordinal `ordinal`.
///
/// - `cuda_uuid`: the driver's UUID for the ordinal (`GPU-...`), when known: the NVML device with that UUID, and
///   no guess when none has it.
/// - Else `visible` (`CUDA_VISIBLE_DEVICES`): its `ordinal`-th entry, an NVML index or a (possibly shortened)
///   `GPU-` UUID; CUDA ignores everything from the first entry it cannot read, and a MIG entry cannot be matched
///   to a whole device here.
/// - Else the ordinal itself (CUDA's order equals NVML's when `CUDA_DEVICE_ORDER=PCI_BUS_ID` or the GPUs are
///   alike, the only cases where a build without CUDA could tell).
pub fn nvml_index(ordinal: u32, cuda_uuid: Option<&str>, visible: Option<&str>, nvml_uuids: &[String]) -> Option<u32> {
    let position = |i: usize| u32::try_from(i).ok();
    if let Some(uuid) = cuda_uuid {
        return nvml_uuids.iter().position(|u| u.eq_ignore_ascii_case(uuid.trim())).and_then(position);
    }
    let Some(visible) = visible else {
        return ((ordinal as usize) < nvml_uuids.len()).then_some(ordinal);
    };
    for (seen, entry) in visible.split(',').map(str::trim).enumerate() {
        let index = entry_index(entry, nvml_uuids)?;
        if seen == ordinal as usize {
            return position(index);
        }
    }
    None
}

/// One `CUDA_VISIBLE_DEVICES` entry: an index into NVML's devices or a unique UUID prefix; None for anything
/// else (where CUDA stops reading the list).
fn entry_index(entry: &str, nvml_uuids: &[String]) -> Option<usize> {
    if let Ok(i) = entry.parse::<usize>() {
        return (i < nvml_uuids.len()).then_some(i);
    }
    let lower = entry.to_ascii_lowercase();
    if !lower.starts_with("gpu-") || lower.len() <= 4 {
        return None;
    }
    let mut hits = nvml_uuids.iter().enumerate().filter(|(_, u)| u.to_ascii_lowercase().starts_with(&lower));
    let (first, _) = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// The `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form NVML and nvidia-smi print, from the driver's 16 bytes.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<String> {
        [
            "GPU-aaaa1111-0000-0000-0000-000000000000",
            "GPU-bbbb2222-0000-0000-0000-000000000000",
            "GPU-aaaa3333-0000-0000-0000-000000000000",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn the_driver_uuid_decides_when_known() {
        let g = gpus();
        assert_eq!(nvml_index(0, Some("GPU-bbbb2222-0000-0000-0000-000000000000"), Some("0"), &g), Some(1));
        assert_eq!(nvml_index(0, Some("gpu-AAAA3333-0000-0000-0000-000000000000"), None, &g), Some(2));
        assert_eq!(nvml_index(0, Some("GPU-ffff0000-0000-0000-0000-000000000000"), None, &g), None, "no guess");
    }

    #[test]
    fn visible_devices_renumber_the_gpus() {
        let g = gpus();
        assert_eq!(nvml_index(0, None, Some("2,0"), &g), Some(2));
        assert_eq!(nvml_index(1, None, Some("2, 0"), &g), Some(0));
        assert_eq!(nvml_index(2, None, Some("2,0"), &g), None, "only two are visible");
        assert_eq!(nvml_index(0, None, Some("GPU-bbbb"), &g), Some(1), "a unique UUID prefix");
        assert_eq!(nvml_index(0, None, Some("GPU-aaaa"), &g), None, "an ambiguous prefix");
        assert_eq!(nvml_index(1, None, Some("1,7,0"), &g), None, "CUDA stops at the first invalid entry");
        assert_eq!(nvml_index(0, None, Some("MIG-1234"), &g), None);
        assert_eq!(nvml_index(0, None, Some(""), &g), None, "an empty list hides every GPU");
    }

    #[test]
    fn without_either_the_ordinal_is_nvml_order() {
        assert_eq!(nvml_index(1, None, None, &gpus()), Some(1));
        assert_eq!(nvml_index(3, None, None, &gpus()), None);
    }

    #[test]
    fn driver_bytes_print_as_nvml_does() {
        let b = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(format_uuid(&b), "GPU-12345678-9abc-def0-0001-020304050607");
    }
}
