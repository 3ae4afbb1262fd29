DROP TABLE addons;
