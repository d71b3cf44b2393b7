//! Virtual time for the daemon's scheduler: `wait_until` jumps to the deadline at once, so a
//! test drives days of schedule without sleeping.

use std::future::Future;
use std::sync::{Arc, Mutex};

use jiff::Zoned;
use qx_agent::daemon::Clock;

/// Virtual time: `wait_until` jumps to the deadline.
#[derive(Clone)]
pub struct FakeClock(Arc<Mutex<Zoned>>);

impl FakeClock {
    pub fn at(s: &str) -> FakeClock {
        FakeClock(Arc::new(Mutex::new(s.parse().unwrap())))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Zoned {
        self.0.lock().unwrap().clone()
    }

    fn wait_until(&self, until: &Zoned) -> impl Future<Output = ()> + Send {
        let mut now = self.0.lock().unwrap();
        if *until > *now {
            *now = until.clone();
        }
        std::future::ready(())
    }
}
