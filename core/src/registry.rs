//! The explicit driver registry: a configuration's `driver = "…"` maps to a driver's
//! options type, which checks its keys and builds the driver. Every driver is registered
//! by name in one place (the binary); nothing registers itself. A driver crate declares
//! its own options (a serde struct, its defaults and its validation) by implementing
//! [`DriverOptions`]; the binary reads them out of its configuration file through an
//! [`OptionsSource`], so core knows no configuration format.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// What the platform tells every driver beside its own keys.
#[derive(Debug, Clone, Default)]
pub struct DriverContext {
    /// Where the platform keeps its data; a driver puts its own state under it.
    pub data_dir: PathBuf,
    /// The configured runtime driver's name: a builder on the same engine shares it.
    pub runtime_driver: String,
    /// The runtime's `socket`, when it names one: a builder on the same engine uses it
    /// unless told otherwise.
    pub runtime_socket: Option<PathBuf>,
    /// The argv prefix of the platform's static file server (what a static site runs).
    pub static_server: Vec<String>,
    /// The container registry builds are pushed to and runtimes pull from, if any.
    pub image_registry: Option<ImageRegistry>,
}

/// A container registry (`[registry]`): container builders push each build to it and
/// deployments name the image by digest, so every node runs exactly the built bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRegistry {
    /// `host:port` (or `host`), as image references start with it: `127.0.0.1:5000`.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl ImageRegistry {
    /// The repository of a project's images: `<address>/paastech/<project>`.
    pub fn repository(&self, project: &str) -> String {
        format!("{}/paastech/{project}", self.address)
    }

    /// Whether the registry is on this machine's loopback: spoken to in plain HTTP, as
    /// Docker does by default (anything else over HTTPS).
    pub fn is_loopback(&self) -> bool {
        let host = match self.address.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => self.address.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// The password never reaches a log.
impl std::fmt::Debug for ImageRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRegistry")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl DriverContext {
    /// A stable name for the instances of the server using `data_dir`, telling them from
    /// other servers' on a shared engine: FNV-1a of the path (stable across releases,
    /// unlike std's hasher).
    pub fn namespace(&self) -> String {
        namespace_of(&self.data_dir)
    }

    /// The runtime's socket when the runtime is the driver `engine`.
    pub fn runtime_socket_of(&self, engine: &str) -> Option<PathBuf> {
        (self.runtime_driver == engine).then(|| self.runtime_socket.clone()).flatten()
    }
}

fn namespace_of(data_dir: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A driver's own configuration keys, declared by its crate: deserialized by the binary
/// (unknown keys are an error there: use `#[serde(deny_unknown_fields)]`), then checked
/// and completed with defaults into the driver's configuration, from which it is built.
pub trait DriverOptions<T: ?Sized>: DeserializeOwned + 'static {
    /// The driver's configuration, every default filled in.
    type Config;

    /// Checks the values and fills in the defaults; an invalid value is
    /// [`Error::Invalid`] with a message that starts with the key's name.
    fn config(self, context: &DriverContext) -> Result<Self::Config>;

    /// The driver itself. Called only when the server starts, after `config`.
    fn build(config: Self::Config) -> Result<Arc<T>>;
}

/// Where a driver's options come from: the binary's configuration format, which locates
/// its errors (file, line, key) in its own error type.
pub trait OptionsSource {
    type Error;

    /// The driver's own keys, as its options type.
    fn options<D: DeserializeOwned>(&self) -> Result<D, Self::Error>;

    fn context(&self) -> &DriverContext;

    /// Locates a registry's or a driver's error (an unknown name, a value out of range).
    fn error(&self, error: Error) -> Self::Error;
}

/// One registered driver, its options type erased.
trait Entry<T: ?Sized, S: OptionsSource> {
    fn check(&self, source: &S) -> Result<(), S::Error>;
    fn build(&self, source: &S) -> Result<Arc<T>, S::Error>;
}

struct Typed<D>(PhantomData<fn() -> D>);

impl<D: DriverOptions<T>, T: ?Sized, S: OptionsSource> Entry<T, S> for Typed<D> {
    fn check(&self, source: &S) -> Result<(), S::Error> {
        let options: D = source.options()?;
        options.config(source.context()).map_err(|err| source.error(err))?;
        Ok(())
    }

    fn build(&self, source: &S) -> Result<Arc<T>, S::Error> {
        let options: D = source.options()?;
        let config = options.config(source.context()).map_err(|err| source.error(err))?;
        D::build(config).map_err(|err| source.error(err))
    }
}

pub struct Registry<T: ?Sized, S: OptionsSource> {
    kind: &'static str,
    drivers: BTreeMap<&'static str, Box<dyn Entry<T, S>>>,
    /// Known names whose backend was not compiled into this binary.
    disabled: BTreeMap<&'static str, &'static str>,
}

impl<T: ?Sized + 'static, S: OptionsSource> Registry<T, S> {
    /// `kind` names what the registry holds in messages: "runtime", "build".
    pub fn new(kind: &'static str) -> Self {
        Registry { kind, drivers: BTreeMap::new(), disabled: BTreeMap::new() }
    }

    /// Registers the driver whose options are `D` under `name`: all a new driver needs.
    pub fn register<D: DriverOptions<T>>(&mut self, name: &'static str) -> &mut Self {
        self.drivers.insert(name, Box::new(Typed::<D>(PhantomData)));
        self
    }

    /// A driver PaaSTech knows of that this build cannot run, with the reason.
    pub fn register_disabled(&mut self, name: &'static str, why: &'static str) -> &mut Self {
        self.disabled.insert(name, why);
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.drivers.keys().copied().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.drivers.contains_key(name)
    }

    /// Checks a name without reading any option: the unknown-name message lists the known.
    pub fn check_name(&self, name: &str) -> Result<()> {
        self.entry(name).map(drop)
    }

    /// Checks the name and the driver's options without building anything.
    pub fn check(&self, name: &str, source: &S) -> Result<(), S::Error> {
        self.entry(name).map_err(|err| source.error(err))?.check(source)
    }

    pub fn build(&self, name: &str, source: &S) -> Result<Arc<T>, S::Error> {
        self.entry(name).map_err(|err| source.error(err))?.build(source)
    }

    fn entry(&self, name: &str) -> Result<&dyn Entry<T, S>> {
        if let Some(entry) = self.drivers.get(name) {
            return Ok(entry.as_ref());
        }
        if let Some(why) = self.disabled.get(name) {
            return Err(Error::Unavailable(format!(
                "the {} driver {name:?} is not enabled in this build: {why}",
                self.kind
            )));
        }
        Err(Error::Invalid(format!(
            "unknown {} driver {name:?}; known drivers: {}",
            self.kind,
            self.names().join(", ")
        )))
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

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HelloOptions {
        who: Option<String>,
        times: Option<u32>,
    }

    impl DriverOptions<dyn Greeter> for HelloOptions {
        type Config = String;
        fn config(self, context: &DriverContext) -> Result<String> {
            if self.times == Some(0) {
                return Err(Error::Invalid("times must be at least 1".into()));
            }
            let who = self.who.unwrap_or_else(|| context.data_dir.display().to_string());
            Ok(vec![who; self.times.unwrap_or(1) as usize].join(" "))
        }
        fn build(config: String) -> Result<Arc<dyn Greeter>> {
            Ok(Arc::new(Hello(config)))
        }
    }

    /// Options as a TOML table; errors as strings.
    struct Table(toml::Table, DriverContext);

    impl OptionsSource for Table {
        type Error = String;
        fn options<D: DeserializeOwned>(&self) -> Result<D, String> {
            toml::Value::Table(self.0.clone()).try_into().map_err(|err: toml::de::Error| err.message().to_owned())
        }
        fn context(&self) -> &DriverContext {
            &self.1
        }
        fn error(&self, error: Error) -> String {
            format!("located: {error}")
        }
    }

    fn table(text: &str) -> Table {
        let context = DriverContext { data_dir: "/srv".into(), ..DriverContext::default() };
        Table(text.parse().expect("toml"), context)
    }

    fn registry() -> Registry<dyn Greeter, Table> {
        let mut r = Registry::new("runtime");
        r.register::<HelloOptions>("hello").register_disabled("swarm", "not implemented yet");
        r
    }

    #[test]
    fn builds_a_registered_driver_with_its_options_and_the_context() {
        let r = registry();
        let greet = |text: &str| r.build("hello", &table(text)).map(|g| g.greet());
        assert_eq!(greet("who = \"ops\"\ntimes = 2").as_deref(), Ok("hello ops ops"));
        assert_eq!(greet("").as_deref(), Ok("hello /srv"));
    }

    #[test]
    fn check_reads_and_validates_the_options_without_building() {
        let r = registry();
        assert_eq!(r.check("hello", &table("who = \"ops\"")), Ok(()));
        let typo = r.check("hello", &table("whom = \"ops\"")).err().unwrap_or_default();
        assert!(typo.contains("unknown field `whom`"), "{typo}");
        let invalid = r.check("hello", &table("times = 0")).err();
        assert_eq!(invalid.as_deref(), Some("located: times must be at least 1"));
    }

    #[test]
    fn unknown_driver_lists_known_names() {
        let err = registry().check("kubernetes", &table("")).err();
        assert_eq!(err.as_deref(), Some("located: unknown runtime driver \"kubernetes\"; known drivers: hello"));
    }

    #[test]
    fn disabled_driver_says_so() {
        let err = registry().check_name("swarm").err();
        assert!(matches!(err, Some(Error::Unavailable(m)) if m.contains("not enabled")));
    }

    #[test]
    fn a_registry_is_loopback_by_its_host_and_hides_its_password() {
        let at = |address: &str| ImageRegistry { address: address.into(), username: None, password: None };
        for (address, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.9.9.9", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("registry.internal:5000", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(at(address).is_loopback(), loopback, "{address}");
        }
        assert_eq!(at("127.0.0.1:5000").repository("blog"), "127.0.0.1:5000/paastech/blog");
        let secret = ImageRegistry { password: Some("hunter2".into()), ..at("r:5000") };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn namespaces_differ_by_data_dir_and_are_stable() {
        let of = |dir: &str| DriverContext { data_dir: dir.into(), ..DriverContext::default() }.namespace();
        assert_ne!(of("/a"), of("/b"));
        assert_eq!(of("/a"), of("/a"));
        // FNV-1a of "/a", written out: containers of running servers keep their label.
        let prime = 0x0100_0000_01b3u64;
        let fnv = ((0xcbf2_9ce4_8422_2325u64 ^ 0x2f).wrapping_mul(prime) ^ 0x61).wrapping_mul(prime);
        assert_eq!(of("/a"), format!("{fnv:016x}"));
    }
}
