-- Version 3: the controller replica each agent last connected to (issue 12; store/agents.rs).
ALTER TABLE agents ADD COLUMN replica TEXT NOT NULL DEFAULT '';
