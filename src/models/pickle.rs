//! A bounded pickle reader for PyTorch checkpoints. Pickles are untrusted programs; this runs only the opcodes
//! a `torch.save` state dict uses, never calls anything, and bounds every cost before paying it: the number of
//! opcodes, of objects, of memo entries, of container elements, the stack depth and every string length (checked
//! against the bytes left). Objects live in one flat arena and refer to each other by index, so the memo shares
//! objects instead of copying them (a few hundred bytes of BINGET/BINPUT doubling cost nothing) and nothing is
//! recursive: dropping a two-million-deep tuple chain is dropping a `Vec`.

#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;

/// Index of an object in the arena.
pub type Id = u32;

/// What one pickle may cost. The defaults are far above what a real state dict needs (EfficientNet-Lite0's
/// state dict pickle runs ~15,000 opcodes) and far below what would hurt the process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_ops: u64,
    pub max_objects: usize,
    pub max_memo: usize,
    /// Container elements across all objects (tuple/list items, dict entries).
    pub max_elements: u64,
    pub max_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_ops: 1 << 23, max_objects: 1 << 20, max_memo: 1 << 20, max_elements: 1 << 22, max_stack: 1 << 16 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Global {
        module: String,
        name: String,
    },
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// `callable(*args)`, never called: kept as data.
    Reduce {
        callable: Id,
        args: Id,
    },
    /// `obj.__setstate__(state)` (BUILD), kept as data.
    Build {
        obj: Id,
        state: Id,
    },
    PersistentId(Id),
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Obj(Id),
    Mark,
}

/// A parsed pickle: the arena and the object STOP returned.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    pub root: Id,
}

impl Pickle {
    pub fn get(&self, id: Id) -> Option<&Object> {
        self.objects.get(id as usize)
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id)? {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, id: Id) -> Option<i64> {
        match self.get(id)? {
            Object::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn tuple(&self, id: Id) -> Option<&[Id]> {
        match self.get(id)? {
            Object::Tuple(t) => Some(t),
            _ => None,
        }
    }

    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id)? {
            Object::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    objects: Vec<Object>,
    stack: Vec<Slot>,
    memo: HashMap<u32, Id>,
    elements: u64,
    limits: Limits,
}

type R<T> = Result<T, String>;

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated: {n} bytes needed at offset {}", self.pos))?;
        let s = self.data.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(*self.take(1)?.first().ok_or("truncated")?)
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    fn line(&mut self) -> R<String> {
        let rest = self.data.get(self.pos..).ok_or("truncated")?;
        let n = rest.iter().take(4096).position(|&b| b == b'\n').ok_or("a line longer than 4096 bytes")?;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.pos += 1;
        Ok(s)
    }

    fn new_obj(&mut self, o: Object) -> R<Id> {
        if self.objects.len() >= self.limits.max_objects {
            return Err(format!("more than {} objects", self.limits.max_objects));
        }
        self.objects.push(o);
        Ok((self.objects.len() - 1) as Id)
    }

    fn push(&mut self, o: Object) -> R<()> {
        let id = self.new_obj(o)?;
        self.push_id(id)
    }

    fn push_id(&mut self, id: Id) -> R<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(format!("a stack deeper than {}", self.limits.max_stack));
        }
        self.stack.push(Slot::Obj(id));
        Ok(())
    }

    fn pop(&mut self) -> R<Id> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => Err("a mark where an object was expected".into()),
            None => Err("pop from an empty stack".into()),
        }
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => Err("no object on the stack".into()),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let at = self.stack.iter().rposition(|s| *s == Slot::Mark).ok_or("no mark on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        items.into_iter().map(|s| if let Slot::Obj(id) = s { Ok(id) } else { Err("mark".to_string()) }).collect()
    }

    fn count(&mut self, n: usize) -> R<()> {
        self.elements = self.elements.saturating_add(n as u64);
        if self.elements > self.limits.max_elements {
            return Err(format!("more than {} container elements", self.limits.max_elements));
        }
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Id>) -> R<()> {
        self.count(items.len())?;
        self.push(Object::Tuple(items))
    }

    fn string(&mut self, n: usize) -> R<()> {
        let bytes = self.take(n)?;
        let s = String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8")?;
        self.push(Object::Str(s))
    }

    fn memo_put(&mut self, key: u32) -> R<()> {
        let id = self.top()?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return Err(format!("more than {} memo entries", self.limits.max_memo));
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> R<()> {
        let id = *self.memo.get(&key).ok_or_else(|| format!("memo entry {key} is not set"))?;
        self.push_id(id)
    }

    /// Appends to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Id>) -> R<()> {
        self.count(items.len())?;
        let target = self.top()?;
        match self.objects.get_mut(target as usize) {
            Some(Object::List(l)) => {
                l.extend(items);
                Ok(())
            }
            _ => Err("APPEND on something that is not a list".into()),
        }
    }

    /// Sets items of the dict on top of the stack (an OrderedDict is built as a dict).
    fn set_items(&mut self, items: Vec<Id>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of objects".into());
        }
        self.count(items.len() / 2)?;
        let target = self.top()?;
        match self.objects.get_mut(target as usize) {
            Some(Object::Dict(d)) => {
                d.extend(items.chunks_exact(2).filter_map(|kv| if let [k, v] = kv { Some((*k, *v)) } else { None }));
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn reduce(&mut self) -> R<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let is_dict = matches!(self.objects.get(callable as usize),
            Some(Object::Global { module, name }) if module == "collections" && (name == "OrderedDict" || name == "defaultdict"));
        if is_dict {
            self.push(Object::Dict(vec![]))
        } else {
            self.push(Object::Reduce { callable, args })
        }
    }

    /// Runs one opcode; true at STOP. One arm per opcode.
    // size-check: table
    fn step(&mut self) -> R<bool> {
        let op = self.byte()?;
        match op {
            0x80 => drop(self.byte()?),    // PROTO
            0x95 => drop(self.le::<8>()?), // FRAME (protocol 4): framing only
            b'.' => return Ok(true),
            b'(' => {
                if self.stack.len() >= self.limits.max_stack {
                    return Err(format!("a stack deeper than {}", self.limits.max_stack));
                }
                self.stack.push(Slot::Mark)
            }
            b'N' => self.push(Object::None)?,
            0x88 => self.push(Object::Bool(true))?,
            0x89 => self.push(Object::Bool(false))?,
            b'K' => {
                let v = self.byte()?;
                self.push(Object::Int(i64::from(v)))?
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Object::Int(i64::from(v)))?
            }
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Object::Int(i64::from(v)))?
            }
            0x8a => {
                // LONG1: a little-endian two's complement integer of up to 8 bytes here.
                let n = usize::from(self.byte()?);
                if n > 8 {
                    return Err(format!("an integer of {n} bytes"));
                }
                let bytes = self.take(n)?;
                let mut v: i64 = 0;
                for (i, b) in bytes.iter().enumerate() {
                    v |= i64::from(*b) << (8 * i);
                }
                if n < 8 && bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    v -= 1i64 << (8 * n);
                }
                self.push(Object::Int(v))?
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Object::Float(v))?
            }
            b'X' => {
                let n = u32::from_le_bytes(self.le()?) as usize;
                self.string(n)?
            }
            0x8c => {
                let n = usize::from(self.byte()?);
                self.string(n)?
            } // SHORT_BINUNICODE
            0x8d => {
                // BINUNICODE8
                let n = usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| "a string length")?;
                self.string(n)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Object::Global { module, name })?
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(Object::Str(m)), Some(Object::Str(n))) =
                    (self.objects.get(module as usize), self.objects.get(name as usize))
                else {
                    return Err("STACK_GLOBAL without two strings".into());
                };
                let g = Object::Global { module: m.clone(), name: n.clone() };
                self.push(g)?
            }
            b')' => self.tuple(vec![])?,
            0x85 => {
                let a = self.pop()?;
                self.tuple(vec![a])?
            }
            0x86 => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.tuple(vec![a, b])?
            }
            0x87 => {
                let c = self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                self.tuple(vec![a, b, c])?
            }
            b't' => {
                let items = self.pop_mark()?;
                self.tuple(items)?
            }
            b']' => self.push(Object::List(vec![]))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.count(items.len())?;
                self.push(Object::List(items))?
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            b'}' => self.push(Object::Dict(vec![]))?,
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Object::Dict(vec![]))?;
                self.set_items(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            b'q' => {
                let k = self.byte()?;
                self.memo_put(u32::from(k))?
            }
            b'r' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_put(k)?
            }
            0x94 => {
                let k = self.memo.len() as u32;
                self.memo_put(k)?
            } // MEMOIZE
            b'h' => {
                let k = self.byte()?;
                self.memo_get(u32::from(k))?
            }
            b'j' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_get(k)?
            }
            b'Q' => {
                let id = self.pop()?;
                self.push(Object::PersistentId(id))?
            }
            b'R' => self.reduce()?,
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                self.push(Object::Reduce { callable: cls, args })?
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.pop()?;
                self.push(Object::Build { obj, state })?
            }
            other => return Err(format!("opcode {other:#04x} at offset {} is not allowed", self.pos - 1)),
        }
        Ok(false)
    }
}

/// Runs one pickle starting at `data[start..]`; returns it and the offset just past its STOP.
pub fn parse(data: &[u8], start: usize, limits: Limits) -> Result<(Pickle, usize), String> {
    let mut vm = Vm { data, pos: start, objects: vec![], stack: vec![], memo: HashMap::new(), elements: 0, limits };
    let mut ops = 0u64;
    loop {
        ops += 1;
        if ops > limits.max_ops {
            return Err(format!("more than {} opcodes", limits.max_ops));
        }
        if vm.step().map_err(|e| format!("bad pickle: {e}"))? {
            break;
        }
    }
    let root = vm.pop().map_err(|e| format!("bad pickle: {e}"))?;
    Ok((Pickle { objects: vm.objects, root }, vm.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &[u8]) -> Result<Pickle, String> {
        parse(b, 0, Limits::default()).map(|(p, _)| p)
    }

    #[test]
    fn a_small_state_dict_shape_parses() {
        // {"a": (1, "x")} with protocol 2 opcodes.
        let mut b = vec![0x80, 2, b'}', b'q', 0, b'X'];
        b.extend(1u32.to_le_bytes());
        b.push(b'a');
        b.extend([b'K', 1, b'X']);
        b.extend(1u32.to_le_bytes());
        b.extend([b'x', 0x86, b's', b'.']);
        let p = run(&b).unwrap();
        let Some(Object::Dict(d)) = p.get(p.root) else { panic!() };
        assert_eq!(p.str(d[0].0), Some("a"));
        let t = p.tuple(d[0].1).unwrap();
        assert_eq!((p.int(t[0]), p.str(t[1])), (Some(1), Some("x")));
    }

    #[test]
    fn hostile_pickles_end_with_a_reason() {
        // Two million nested TUPLE1s: refused at the object cap; below it, a long chain is just a long arena.
        let mut b = vec![b'N'];
        b.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        b.push(b'.');
        assert!(run(&b).unwrap_err().contains("more than 1048576 objects"));
        let chain = [&[b'N'][..], &[0x85u8; 500_000][..], b"."].concat();
        assert!(run(&chain).is_ok());
        // Memo doubling: put a list, then (get, get) tuple, put, repeatedly: objects are shared, not copied.
        let mut b = vec![b']', b'q', 0];
        for _ in 0..200 {
            b.extend([b'0', b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        b.push(b'.');
        // b'0' (POP) is not an allowed opcode: the reader stops there with its reason.
        assert!(run(&b).unwrap_err().contains("not allowed"));
        let mut b = vec![b']', b'q', 0];
        for _ in 0..200 {
            b.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        b.push(b'.');
        assert!(run(&b).is_ok(), "200 doublings cost 200 tuples");
        // Limits: opcodes, stack depth, string lengths past the end, globals are data only.
        let many = vec![b'N'; 100];
        let small = Limits { max_ops: 50, ..Limits::default() };
        assert!(parse(&many, 0, small).unwrap_err().contains("opcodes"));
        let marks = vec![b'('; 1 << 17];
        assert!(run(&marks).unwrap_err().contains("stack"));
        let mut s = vec![b'X'];
        s.extend(u32::MAX.to_le_bytes());
        assert!(run(&s).unwrap_err().contains("truncated"));
        assert!(run(b"cos\nsystem\n(X\x02\x00\x00\x00lstR.").is_ok(), "REDUCE never calls");
        assert!(run(b"").unwrap_err().contains("truncated"));
        assert!(run(b"t.").unwrap_err().contains("mark"));
    }
}
