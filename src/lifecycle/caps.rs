//! The one rule every count in a load request's settings follows: at most a cap, said with the setting's name.
//! A leaf, so the settings' owners (warmup.rs, gates.rs) and their merger (spec.rs) need not import each other.

/// `name` must be at most `max`.
pub fn cap(name: &str, value: usize, max: usize) -> Result<(), String> {
    if value > max {
        return Err(format!("{name} is {value}; at most {max} is allowed"));
    }
    Ok(())
}
