//! Running blocking work so that a panic in it becomes an error of that work
//! (reported, counted, the actor restarted) instead of a lost thread or a
//! task that never reports back.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The text a panic was raised with (`panic!("...")` gives a `&str` or a
/// `String`; anything else is named as such).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs `f`; a panic comes back as `Err(<message>)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(&*payload))
}

/// Runs `f`; a panic comes back as `Err("panicked: <message>")`.
pub fn run<T, E: ToString>(f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match catch(f) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(why) => Err(format!("panicked: {why}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error_naming_it() {
        let r: Result<(), String> = super::run(|| -> Result<(), String> { panic!("disk on fire") });
        assert_eq!(r, Err("panicked: disk on fire".to_string()));
        let n = 3;
        let r: Result<(), String> =
            super::run(|| -> Result<(), String> { panic!("segment {n} vanished") });
        assert_eq!(r, Err("panicked: segment 3 vanished".to_string()));
        assert_eq!(super::run(|| Ok::<_, String>(7)), Ok(7));
        assert_eq!(
            super::run(|| Err::<(), _>("plain")),
            Err("plain".to_string())
        );
    }
}
