DROP TABLE stopped_processes;
