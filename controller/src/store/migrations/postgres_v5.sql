-- Version 5: systemd journal units as a resource of grants and requests (issue 13). Every
-- existing grant and request names no unit.
ALTER TABLE grants ADD COLUMN units TEXT NOT NULL DEFAULT '[]';
ALTER TABLE requests ADD COLUMN units TEXT NOT NULL DEFAULT '[]';
