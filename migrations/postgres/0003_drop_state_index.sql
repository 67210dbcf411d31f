-- status counts scan the table; keeping an index on state cost every insert and update.
DROP INDEX IF EXISTS followups_state;
