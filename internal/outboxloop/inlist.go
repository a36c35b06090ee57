package outboxloop

import (
	"context"
	"database/sql"
	"strings"
)

// inChunkSize bounds the placeholders of one ExecIn statement.
const inChunkSize = 500

// ExecIn runs stmt, which ends in "IN (", for ids on db, inChunkSize at a
// time, as stmt + "?, ?, ...) AND claimed_by = ?", with pre before the ids
// and token last: the Driver statements of database/sql dialects without
// array parameters (MySQL, SQLite). It stops at the first error; chunks
// already run stay done.
func ExecIn[ID any](ctx context.Context, db *sql.DB, stmt string, pre []any, ids []ID, token string) error {
	for len(ids) > 0 {
		part := ids[:min(len(ids), inChunkSize)]
		ids = ids[len(part):]
		in, args := InList(part)
		args = append(append(append([]any{}, pre...), args...), token)
		if _, err := db.ExecContext(ctx, stmt+in+") AND claimed_by = ?", args...); err != nil {
			return err
		}
	}
	return nil
}

// InList returns "?, ?, ..." and the arguments for ids.
func InList[ID any](ids []ID) (string, []any) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", "), args
}
