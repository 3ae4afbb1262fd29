DROP TABLE cron_runs;
DROP TABLE build_cron;
