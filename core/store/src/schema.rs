//! The tables, as diesel sees them. One schema for both backends: every column type here
//! (BigInt, Text, Bool) means the same on SQLite and PostgreSQL. Kept by hand in step with
//! `migrations/{sqlite,postgres}`.

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        password_hash -> Text,
        is_admin -> Bool,
        created_at -> BigInt,
        disabled -> Bool,
        email_verified -> Bool,
    }
}

diesel::table! {
    email_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        purpose -> Text,
        token_hash -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    user_totp (user_id) {
        user_id -> BigInt,
        secret -> Text,
        key_id -> Text,
        enabled -> Bool,
        last_step -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    recovery_codes (id) {
        id -> BigInt,
        user_id -> BigInt,
        code_hash -> Text,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    ssh_keys (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        fingerprint -> Text,
        public_key -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    projects (id) {
        id -> BigInt,
        owner_id -> BigInt,
        name -> Text,
        created_at -> BigInt,
        previews_enabled -> Bool,
        preview_of -> Nullable<BigInt>,
        preview_branch -> Nullable<Text>,
    }
}

diesel::table! {
    project_limits (project_id) {
        project_id -> BigInt,
        memory_mb -> Nullable<BigInt>,
        cpus -> Nullable<Double>,
    }
}

diesel::table! {
    project_https (project_id) {
        project_id -> BigInt,
        https_redirect -> Bool,
        hsts_max_age -> Nullable<BigInt>,
    }
}

diesel::table! {
    project_sleep (project_id) {
        project_id -> BigInt,
        enabled -> Bool,
        after_minutes -> Integer,
        workers_keep_awake -> Bool,
        asleep -> Bool,
        wake_error -> Nullable<Text>,
    }
}

diesel::table! {
    env_vars (project_id, key) {
        project_id -> BigInt,
        key -> Text,
        value -> Text,
        /// The key that sealed `value`; NULL while it is still in the clear.
        key_id -> Nullable<Text>,
    }
}

diesel::table! {
    process_scale (project_id, process_type) {
        project_id -> BigInt,
        process_type -> Text,
        count -> BigInt,
    }
}

diesel::table! {
    builds (id) {
        id -> BigInt,
        project_id -> BigInt,
        commit -> Text,
        status -> Text,
        artifact -> Nullable<Text>,
        processes -> Text,
        log -> Text,
        created_at -> BigInt,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    deployments (id) {
        id -> BigInt,
        project_id -> BigInt,
        version -> BigInt,
        status -> Text,
        build_id -> Nullable<BigInt>,
        commit -> Nullable<Text>,
        config -> Text,
        scale -> Text,
        cause -> Text,
        failure -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        /// The key that sealed the values in `config`; NULL while they are in the clear.
        config_key_id -> Nullable<Text>,
    }
}

diesel::table! {
    domains (id) {
        id -> BigInt,
        project_id -> BigInt,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    addons (id) {
        id -> BigInt,
        project_id -> BigInt,
        name -> Text,
        kind -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    stopped_processes (project_id, process_type) {
        project_id -> BigInt,
        process_type -> Text,
    }
}

diesel::table! {
    webhooks (id) {
        id -> BigInt,
        project_id -> BigInt,
        url -> Text,
        /// Event names, comma-separated.
        events -> Text,
        /// Sealed like config vars, for the project's name and the var `webhook-secret`.
        secret -> Text,
        secret_key_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> BigInt,
        webhook_id -> BigInt,
        delivery -> Text,
        event -> Text,
        attempt -> BigInt,
        at -> BigInt,
        status_code -> Nullable<BigInt>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    /// The jobs a build's `app.json` declared: a JSON list of `CronJob`.
    build_cron (build_id) {
        build_id -> BigInt,
        jobs -> Text,
    }
}

diesel::table! {
    cron_runs (id) {
        id -> BigInt,
        project_id -> BigInt,
        /// The job's index in `app.json`.
        job -> BigInt,
        command -> Text,
        schedule -> Text,
        version -> BigInt,
        scheduled_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        outcome -> Text,
        exit_code -> Nullable<BigInt>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    collaborators (project_id, user_id) {
        project_id -> BigInt,
        user_id -> BigInt,
        role -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    /// The audit log; no foreign keys: a record outlives what it names.
    audit_events (id) {
        id -> BigInt,
        at -> BigInt,
        actor_id -> Nullable<BigInt>,
        actor -> Nullable<Text>,
        address -> Nullable<Text>,
        project_id -> Nullable<BigInt>,
        project -> Nullable<Text>,
        action -> Text,
        detail -> Text,
    }
}

diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(email_tokens -> users (user_id));
diesel::joinable!(user_totp -> users (user_id));
diesel::joinable!(recovery_codes -> users (user_id));
diesel::joinable!(collaborators -> users (user_id));
diesel::joinable!(collaborators -> projects (project_id));
diesel::joinable!(ssh_keys -> users (user_id));
diesel::joinable!(deployments -> projects (project_id));
diesel::joinable!(env_vars -> projects (project_id));
diesel::joinable!(webhooks -> projects (project_id));
diesel::joinable!(webhook_attempts -> webhooks (webhook_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    api_tokens,
    ssh_keys,
    projects,
    project_limits,
    project_https,
    project_sleep,
    env_vars,
    process_scale,
    stopped_processes,
    builds,
    deployments,
    domains,
    addons,
    webhooks,
    webhook_attempts,
    build_cron,
    cron_runs,
    email_tokens,
    user_totp,
    recovery_codes,
    collaborators,
    audit_events,
);
