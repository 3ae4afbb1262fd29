//! The explicit driver registry: a configuration's `driver = "…"` maps to a constructor.
//! Every driver is registered by name in one place (the binary); nothing registers
//! itself. Generic over the options type so that core knows no configuration format.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};

type Constructor<T, O> = Box<dyn Fn(O) -> Result<Arc<T>> + Send + Sync>;

pub struct Registry<T: ?Sized, O> {
    kind: &'static str,
    constructors: BTreeMap<&'static str, Constructor<T, O>>,
    /// Known names whose backend was not compiled into this binary.
    disabled: BTreeMap<&'static str, &'static str>,
}

impl<T: ?Sized, O> Registry<T, O> {
    /// `kind` names what the registry holds in messages: "runtime", "build".
    pub fn new(kind: &'static str) -> Self {
        Registry { kind, constructors: BTreeMap::new(), disabled: BTreeMap::new() }
    }

    pub fn register(
        &mut self,
        name: &'static str,
        constructor: impl Fn(O) -> Result<Arc<T>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.constructors.insert(name, Box::new(constructor));
        self
    }

    /// A driver PaaSTech knows of that this build cannot run, with the reason.
    pub fn register_disabled(&mut self, name: &'static str, why: &'static str) -> &mut Self {
        self.disabled.insert(name, why);
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.constructors.keys().copied().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.constructors.contains_key(name)
    }

    /// Checks a name without building anything: the unknown-name message lists the known.
    pub fn check(&self, name: &str) -> Result<()> {
        if self.constructors.contains_key(name) {
            return Ok(());
        }
        if let Some(why) = self.disabled.get(name) {
            return Err(Error::Unavailable(format!(
                "{} driver {name:?} is not enabled in this build: {why}",
                self.kind
            )));
        }
        Err(Error::Invalid(format!(
            "unknown {} driver {name:?}; known drivers: {}",
            self.kind,
            self.names().join(", ")
        )))
    }

    pub fn build(&self, name: &str, options: O) -> Result<Arc<T>> {
        self.check(name)?;
        let constructor = self.constructors.get(name).expect("checked above");
        constructor(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self) -> String;
    }
    struct Hello(String);
    impl Greeter for Hello {
        fn greet(&self) -> String {
            format!("hello {}", self.0)
        }
    }

    fn registry() -> Registry<dyn Greeter, String> {
        let mut r: Registry<dyn Greeter, String> = Registry::new("runtime");
        r.register("hello", |who| Ok(Arc::new(Hello(who)) as Arc<dyn Greeter>))
            .register("polite", |who| Ok(Arc::new(Hello(format!("dear {who}"))) as Arc<dyn Greeter>))
            .register_disabled("swarm", "not implemented yet");
        r
    }

    #[test]
    fn builds_a_registered_driver_with_its_options() {
        let r = registry();
        assert_eq!(r.build("polite", "ops".into()).map(|g| g.greet()).ok().as_deref(), Some("hello dear ops"));
    }

    #[test]
    fn unknown_driver_lists_known_names() {
        let err = registry().build("kubernetes", String::new()).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown runtime driver \"kubernetes\"; known drivers: hello, polite"));
    }

    #[test]
    fn disabled_driver_says_so() {
        let err = registry().check("swarm").err();
        assert!(matches!(err, Some(Error::Unavailable(m)) if m.contains("not enabled")));
    }
}
