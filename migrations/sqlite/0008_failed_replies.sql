-- `status` groups failed follow-ups by SMTP reply: a partial index holds only the failed
-- rows, so inserts and updates of the others pay nothing and the grouping reads no more
-- than the failed ones (0007 is the clicks table of the measuring work).
CREATE INDEX followups_failed_reply ON followups (smtp_reply) WHERE state = 'failed';
