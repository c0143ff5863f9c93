//! The dependencies every domain service shares: the `Hsm` and `Store` ports and the clock.

use std::sync::Arc;

use super::clock::Clock;

pub struct Deps<H, S> {
    pub hsm: Arc<H>,
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
}

impl<H, S> Deps<H, S> {
    pub fn new(hsm: Arc<H>, store: Arc<S>, clock: Arc<dyn Clock>) -> Self {
        Self { hsm, store, clock }
    }
}

// Written by hand: the derive would require `H: Clone` and `S: Clone`.
impl<H, S> Clone for Deps<H, S> {
    fn clone(&self) -> Self {
        Self { hsm: self.hsm.clone(), store: self.store.clone(), clock: self.clock.clone() }
    }
}
