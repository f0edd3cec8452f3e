//! Shared weights: when a model loads on a device where another loaded model already holds an object (a dense
//! tensor, a linear layer, a stacked group of linear layers) built from identical bytes, it takes that object
//! instead of building a second copy. The same model in both slots costs about one copy of its weights; a
//! fine-tune that changed a few layers costs only those layers.
//!
//! Objects are keyed by a content key (BLAKE3 of the source bytes plus what the loader turns them into, computed
//! by `weights.rs` before anything is allocated on the device) and the device. The registry holds one strong
//! reference per object and counts the loaded models using it; a model's `Holdings` releases its objects when
//! the model is dropped, and the registry forgets an object when its last user goes.

use super::linear::{tensor_bytes, Linear, LinearGroup};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// BLAKE3 of an object's source bytes and how they are loaded.
pub type Key = [u8; 32];

/// A shareable loaded object.
#[derive(Clone)]
pub enum Item {
    Tensor(Tensor),
    Linear(Linear),
    Group(LinearGroup),
}

impl Item {
    /// Bytes the object occupies on its device.
    pub fn bytes(&self) -> u64 {
        match self {
            Item::Tensor(t) => tensor_bytes(t),
            Item::Linear(l) => l.bytes(),
            Item::Group(g) => g.bytes(),
        }
    }
}

/// Names a device for the registry (objects are shared only within one device).
pub fn device_key(d: &Device) -> String {
    format!("{:?}", d.location())
}

struct Entry {
    item: Item,
    bytes: u64,
    users: usize,
}

/// Every shared object of the process, per device. One per server; cheap to clone.
#[derive(Clone, Default)]
pub struct TensorRegistry {
    map: Arc<Mutex<HashMap<(String, Key), Entry>>>,
}

impl TensorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Key), Entry>> {
        // Entries are inserted and removed whole, so a panic elsewhere cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held on `device` (each object once, however many models use it).
    pub fn device_bytes(&self, device: &str) -> u64 {
        self.lock().iter().filter(|((d, _), _)| d == device).map(|(_, e)| e.bytes).sum()
    }

    /// Objects and bytes in the registry (all devices).
    pub fn totals(&self) -> (usize, u64) {
        let m = self.lock();
        (m.len(), m.values().map(|e| e.bytes).sum())
    }

    fn users(&self, device: &str, key: &Key) -> usize {
        self.lock().get(&(device.to_string(), *key)).map(|e| e.users).unwrap_or(0)
    }

    fn release(&self, device: &str, key: &Key) {
        let mut m = self.lock();
        let k = (device.to_string(), *key);
        if let Some(e) = m.get_mut(&k) {
            e.users = e.users.saturating_sub(1);
            if e.users == 0 {
                m.remove(&k);
            }
        }
    }
}

/// The shared objects one loaded model uses. Dropping it (with the model) releases them.
pub struct Holdings {
    registry: TensorRegistry,
    device: String,
    /// Key -> (times this model took it, bytes).
    keys: HashMap<Key, (usize, u64)>,
    /// Bytes this model found already loaded (by another model) when it loaded.
    reused_at_load: u64,
    /// Bytes of objects this model holds outside the registry (a model moved to another device).
    own_bytes: u64,
}

impl Holdings {
    pub fn new(registry: TensorRegistry, device: &Device) -> Self {
        Holdings { registry, device: device_key(device), keys: HashMap::new(), reused_at_load: 0, own_bytes: 0 }
    }

    /// A record for `bytes` of objects not shared with anything (a model copied to another device).
    pub fn unshared(device: &Device, bytes: u64) -> Self {
        let mut h = Holdings::new(TensorRegistry::new(), device);
        h.own_bytes = bytes;
        h
    }

    /// The object for `key`: the loaded one if the device has it, else `make()`'s, which is then registered.
    pub fn intern(
        &mut self,
        key: Key,
        make: impl FnOnce() -> crate::error::Result<Item>,
    ) -> crate::error::Result<Item> {
        let k = (self.device.clone(), key);
        if let Some(item) = self.take_existing(&k) {
            return Ok(item);
        }
        let item = make()?;
        let bytes = item.bytes();
        let mut m = self.registry.lock();
        // Another load may have registered the same object meanwhile: use that one and drop ours.
        let entry = m.entry(k).or_insert(Entry { item, bytes, users: 0 });
        entry.users += 1;
        let (item, bytes) = (entry.item.clone(), entry.bytes);
        drop(m);
        let slot = self.keys.entry(key).or_insert((0, bytes));
        slot.0 += 1;
        Ok(item)
    }

    fn take_existing(&mut self, k: &(String, Key)) -> Option<Item> {
        let mut m = self.registry.lock();
        let e = m.get_mut(k)?;
        e.users += 1;
        let (item, bytes) = (e.item.clone(), e.bytes);
        drop(m);
        let mine = self.keys.entry(k.1).or_insert((0, bytes));
        if mine.0 == 0 {
            self.reused_at_load += bytes;
        }
        mine.0 += 1;
        Some(item)
    }

    /// Bytes of the distinct objects this model uses.
    pub fn bytes(&self) -> u64 {
        self.keys.values().map(|(_, b)| b).sum::<u64>() + self.own_bytes
    }

    /// Bytes of this model's objects that another loaded model also uses now.
    pub fn shared_bytes(&self) -> u64 {
        self.keys
            .iter()
            .filter(|(k, (mine, _))| self.registry.users(&self.device, k) > *mine)
            .map(|(_, (_, b))| b)
            .sum()
    }

    /// Bytes found already loaded when this model loaded.
    pub fn reused_at_load(&self) -> u64 {
        self.reused_at_load
    }

    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Drop for Holdings {
    fn drop(&mut self) {
        for (key, (n, _)) in &self.keys {
            for _ in 0..*n {
                self.registry.release(&self.device, key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(v: f32) -> Item {
        Item::Tensor(Tensor::full(v, 256, &Device::Cpu).unwrap())
    }

    #[test]
    fn identical_keys_share_one_object_until_the_last_user_goes() {
        let reg = TensorRegistry::new();
        let mut a = Holdings::new(reg.clone(), &Device::Cpu);
        let mut b = Holdings::new(reg.clone(), &Device::Cpu);
        a.intern([1; 32], || Ok(tensor(1.0))).unwrap();
        a.intern([2; 32], || Ok(tensor(2.0))).unwrap();
        let mut built = false;
        b.intern([1; 32], || {
            built = true;
            Ok(tensor(9.0))
        })
        .unwrap();
        assert!(!built, "the second model reuses the first one's object");
        b.intern([3; 32], || Ok(tensor(3.0))).unwrap();
        assert_eq!(reg.device_bytes(&device_key(&Device::Cpu)), 3 * 1024);
        assert_eq!((a.bytes(), a.shared_bytes()), (2048, 1024));
        assert_eq!((b.bytes(), b.shared_bytes(), b.reused_at_load()), (2048, 1024, 1024));
        drop(a);
        assert_eq!(b.shared_bytes(), 0);
        assert_eq!(reg.totals(), (2, 2048));
        drop(b);
        assert_eq!(reg.totals(), (0, 0));
    }

    #[test]
    fn one_model_taking_an_object_twice_does_not_share_it_with_itself() {
        let reg = TensorRegistry::new();
        let mut a = Holdings::new(reg.clone(), &Device::Cpu);
        a.intern([1; 32], || Ok(tensor(1.0))).unwrap();
        a.intern([1; 32], || Ok(tensor(1.0))).unwrap();
        assert_eq!((a.bytes(), a.shared_bytes(), a.reused_at_load()), (1024, 0, 0));
        drop(a);
        assert_eq!(reg.totals(), (0, 0));
    }
}
