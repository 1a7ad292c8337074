-- Audit database schema v1 as registry/audit.py at commit 6faeed2 writes it on SQLite, with three rows;
-- dumped with sqlite3's iterdump. tests/test_audit.py restores it and opens it with the current code.
BEGIN TRANSACTION;
CREATE TABLE restar_audit_schema (
	version INTEGER NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "restar_audit_schema" VALUES(1,'2026-11-29 02:56:17.100049');
CREATE TABLE restar_promotion_audit (
	id INTEGER NOT NULL, 
	model_name VARCHAR(256) NOT NULL, 
	alias VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	previous_version INTEGER, 
	action VARCHAR(32) NOT NULL, 
	decision VARCHAR(32) NOT NULL, 
	gate_results JSON NOT NULL, 
	actor VARCHAR(256) NOT NULL, 
	reason TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "restar_promotion_audit" VALUES(1,'restar','production',1,NULL,'promote','moved','[{"gate": "accuracy", "passed": true, "value": 0.81, "threshold": 0.7}]','ci','','2026-11-29 02:56:17.101813');
INSERT INTO "restar_promotion_audit" VALUES(2,'restar','production',2,1,'promote','rejected','[{"gate": "accuracy", "passed": false, "value": 0.62, "threshold": 0.7}]','ci','','2026-11-29 02:56:17.104587');
INSERT INTO "restar_promotion_audit" VALUES(3,'restar','production',2,1,'force','pending','[]','alice','hotfix: l''été "quoted"','2026-11-29 02:56:17.105993');
CREATE TABLE restar_promotion_lock (
	model_name VARCHAR(256) NOT NULL, 
	holder VARCHAR(256) NOT NULL, 
	acquired_at DATETIME NOT NULL, 
	PRIMARY KEY (model_name)
);
CREATE INDEX ix_restar_promotion_audit_model_name ON restar_promotion_audit (model_name);
CREATE INDEX ix_restar_promotion_audit_created_at ON restar_promotion_audit (created_at);
COMMIT;
