DROP INDEX deployments_one_live;
