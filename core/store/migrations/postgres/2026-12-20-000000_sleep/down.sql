DROP TABLE project_sleep;
