//! A store that keeps nothing across restarts (`backend = "memory"`, and unit tests).

use super::{BindingStore, BoxFuture, StoreError, StoreOp};
use crate::location::{Binding, UnixMs};
use std::collections::HashMap;

#[derive(Default)]
pub struct MemoryStore {
    rows: HashMap<(String, String), Binding>,
}

impl BindingStore for MemoryStore {
    fn load_bindings(&mut self, now: UnixMs) -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
        self.rows.retain(|_, b| b.expires_at > now);
        let v = self.rows.values().cloned().collect();
        Box::pin(async move { Ok(v) })
    }

    fn apply<'a>(&'a mut self, ops: &'a [StoreOp]) -> BoxFuture<'a, Result<(), StoreError>> {
        for op in ops {
            match op {
                StoreOp::Upsert(b) => {
                    self.rows.insert((b.aor.clone(), b.key.clone()), b.clone());
                }
                StoreOp::Delete { aor, key, .. } => {
                    self.rows.remove(&(aor.clone(), key.clone()));
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn load_users(&mut self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
