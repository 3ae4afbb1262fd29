//! Schemas the derive cannot express: a project name's rule, and the maps of env vars and
//! of scale with the names and values the handlers accept. Written out so the document says
//! exactly what the validation in `projects.rs` checks.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

use super::projects::{MAX_ENV_VALUE_BYTES, MAX_INSTANCES};

/// `ProjectName::parse`'s rule: a DNS label of 2 to 40 characters.
fn project_name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z][a-z0-9-]{0,38}[a-z0-9]$"))
        .min_length(Some(2))
        .max_length(Some(40))
}

/// A project's name: lowercase letters, digits and hyphens, starting with a letter and not
/// ending with a hyphen, 2 to 40 characters.
pub struct ProjectNameSchema;

impl PartialSchema for ProjectNameSchema {
    fn schema() -> RefOr<Schema> {
        project_name()
            .description(Some(
                "a DNS label: lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen",
            ))
            .examples(["blog"])
            .into()
    }
}

impl ToSchema for ProjectNameSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ProjectName".into()
    }
}

/// An add-on's name as `AddonName::parse` takes it.
pub struct AddonNameSchema;

impl PartialSchema for AddonNameSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z][a-z0-9-]{0,17}[a-z0-9]$"))
            .min_length(Some(2))
            .max_length(Some(19))
            .description(Some(
                "lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen, 2 to 19 characters",
            ))
            .examples(["postgres"])
            .into()
    }
}

impl ToSchema for AddonNameSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "AddonName".into()
    }
}

/// A custom domain as `Hostname::parse` takes it: RFC 1123 labels, at least two, the last
/// starting with a letter (a numeric one would read as an IP address), any case, an
/// optional trailing dot; stored lowercase without the dot. Exactly what is taken, so a
/// name that does not match is refused (400); one that matches may still be refused for
/// its length (253 without the dot) or as the platform's own name.
pub struct DomainNameSchema;

impl PartialSchema for DomainNameSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"))
            .min_length(Some(3))
            .max_length(Some(254))
            .description(Some(
                "a host name such as www.example.com: labels of letters, digits and hyphens, internationalized names in their ASCII (xn--) form; not an IP address, not a wildcard, not a name under the platform's app domain",
            ))
            .examples(["www.example.com"])
            .into()
    }
}

impl ToSchema for DomainNameSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "DomainName".into()
    }
}

/// `validate_env_key`'s rule (the name `PORT` is refused too: it is the platform's).
fn env_key() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$"))
        .max_length(Some(256))
        .into()
}

/// `PATCH /projects/{name}/env`: `{"KEY": "value"}` sets, `{"KEY": null}` unsets.
pub struct EnvChangesSchema;

impl PartialSchema for EnvChangesSchema {
    fn schema() -> RefOr<Schema> {
        let value = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .max_length(Some(MAX_ENV_VALUE_BYTES))
            .description(Some("the new value (no NUL byte), or null to unset"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(env_key()))
            .additional_properties(Some(RefOr::T(value.into())))
            .min_properties(Some(1))
            .description(Some("env var names (letters, digits and underscores, not starting with a digit; not PORT) to their new values"))
            .examples([serde_json::json!({"DATABASE_URL": "postgres://db/app", "DEBUG": null})])
            .into()
    }
}

impl ToSchema for EnvChangesSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "EnvChanges".into()
    }
}

/// A project's env vars.
pub struct EnvSchema;

impl PartialSchema for EnvSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(env_key()))
            .additional_properties(Some(RefOr::T(ObjectBuilder::new().schema_type(Type::String).into())))
            .description(Some("env var names to values"))
            .into()
    }
}

impl ToSchema for EnvSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Env".into()
    }
}

/// Instances per process type, as `check_scale` accepts them.
fn scale() -> ObjectBuilder {
    let process =
        ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z0-9_-]{1,63}$")).max_length(Some(63));
    let count = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(0))
        .maximum(Some(MAX_INSTANCES));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(process))
        .additional_properties(Some(RefOr::T(count.into())))
        .description(Some("process types (as in the Procfile) to their number of instances"))
        .examples([serde_json::json!({"web": 2, "worker": 1})])
}

/// `PUT /projects/{name}/scale`: at least one process type.
pub struct ScaleChangeSchema;

impl PartialSchema for ScaleChangeSchema {
    fn schema() -> RefOr<Schema> {
        scale().min_properties(Some(1)).into()
    }
}

impl ToSchema for ScaleChangeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ScaleChange".into()
    }
}

/// A project's instances per process type.
pub struct ScaleSchema;

impl PartialSchema for ScaleSchema {
    fn schema() -> RefOr<Schema> {
        scale().into()
    }
}

impl ToSchema for ScaleSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Scale".into()
    }
}
