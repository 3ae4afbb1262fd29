DROP TABLE project_https;
