#!/usr/bin/env python3
"""The idempotency ledger's write pattern as a model: WAL bytes per send for INSERT OR REPLACE against
INSERT ... ON CONFLICT DO UPDATE (same schema as EmbeddedIdempotencyStore, 200 000 rows present, each
transaction 50 new claims and the previous 50 outcomes). Run: python3 bench/ledger_wal_model.py"""
import sqlite3, os, hashlib, time
def run(mode):
    path=f'/tmp/ledger-wal-model-{mode}.db'
    for ext in ('','-wal','-shm'):
        try: os.remove(path+ext)
        except FileNotFoundError: pass
    db=sqlite3.connect(path, isolation_level=None)
    db.execute('PRAGMA journal_mode=WAL'); db.execute('PRAGMA synchronous=NORMAL'); db.execute('PRAGMA wal_autocheckpoint=0')
    db.execute('CREATE TABLE ledger (key TEXT PRIMARY KEY, owner TEXT NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL, expires INTEGER NOT NULL, answer BLOB)')
    db.execute('CREATE INDEX ledger_by_expiry ON ledger(expires)')
    k=lambda i: hashlib.sha256(str(i).encode()).hexdigest()
    db.execute('BEGIN')
    for i in range(200000):
        db.execute('INSERT INTO ledger VALUES (?,?,?,?,?,?)',(k(i),'o','d'*64,'done',i,b'x'*300))
    db.execute('COMMIT'); db.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    sql_rep='INSERT OR REPLACE INTO ledger (key, owner, digest, state, expires, answer) VALUES (?,?,?,?,?,?)'
    sql_up='INSERT INTO ledger (key, owner, digest, state, expires, answer) VALUES (?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET owner=excluded.owner, digest=excluded.digest, state=excluded.state, expires=excluded.expires, answer=excluded.answer'
    sql=sql_rep if mode=='replace' else sql_up
    n=0; t=time.time(); base=200000
    for b in range(100):
        db.execute('BEGIN')
        # this transaction: 50 new claims and the outcomes of the previous batch's 50
        for j in range(50):
            i=base+b*50+j
            db.execute(sql,(k(i),'o','d'*64,'inFlight',10**9+i,None))
            if b>0:
                p=base+(b-1)*50+j
                db.execute(sql,(k(p),'o','d'*64,'done',2*10**9+p,b'y'*300))
        db.execute('COMMIT')
    wal=os.path.getsize(path+'-wal')
    print(mode, 'wal bytes per send', wal/(100*50), 'pages per send', wal/(100*50)/4120, 'time', round(time.time()-t,2))
run('replace'); run('upsert')
