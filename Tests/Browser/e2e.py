"""End-to-end: the real custos-collector with its admin listener serving dashboard/, real agents
on Xvfb (one end-to-end encrypted, one sealing to the collector's own key), admin accounts made
with `custos admins add --password-file`, and the dashboard driven in headless Chromium.

What it shows (issue 15 "Tests (real browser)"): tiles show <Encrypted>; a wrong passphrase
gives an error and decrypts nothing; the right one shows the painted colour in the frame canvas
and the typed text; the collector-sealed agent is shown without a passphrase (mixed fleet); Lock
masks again; the session player shows the colour; the export zip holds the frames, the WebM and
the keystrokes; a viewer gets 403 for /sealed and has no Decrypt; an auditor sees the audit
entries; the security headers are on every answer; a POST with a foreign Origin is refused; and
the collector's whole log contains neither the passphrase, nor the private key, nor a DEK, nor
the typed text."""

import base64
import glob
import hashlib
import http.client
import json
import os
import re
import sqlite3
import ssl
import subprocess
import urllib.parse
import time
import zipfile

from support import (CSP, DASHBOARD, Failure, Xvfb, browser_log, chromium, free_port, log, make_keypair,
                     wait_for)
from support import run as sh

PASSPHRASE = "e2e passphrase: never logged 7"
TYPED = "sekret typing 42"
COLOUR_E2EE = "#c83214"
COLOUR_PLAIN = "#2a7f3c"
PLAIN_USER = "nobody"
PASSWORDS = {"alice": "alice password 123", "bob": "bob password 12345", "carol": "carol password 123"}
ROLES = {"alice": "decryptor", "bob": "viewer", "carol": "auditor"}


class Admin:
    """A minimal HTTPS client of the admin API (the collector's self-signed certificate is the trust root)."""

    def __init__(self, port, cafile):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.cookie = None
        self.origin = f"https://127.0.0.1:{port}"

    def request(self, method, path, body=None, origin=True, headers=None):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        h = dict(headers or {})
        if self.cookie:
            h["Cookie"] = self.cookie
        if body is not None:
            h["Content-Type"] = "application/json"
            body = json.dumps(body)
        if origin is True:
            h["Origin"] = self.origin
        elif origin:
            h["Origin"] = origin
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data

    def login(self, name):
        status, headers, data = self.request("POST", "/api/v1/login", {"name": name, "password": PASSWORDS[name]})
        if status != 200:
            raise Failure(f"login {name}: {status} {data[:200]}")
        self.cookie = headers["set-cookie"].split(";")[0]
        return json.loads(data)

    def json(self, path):
        status, _, data = self.request("GET", path)
        if status != 200:
            raise Failure(f"GET {path}: {status} {data[:300]}")
        return json.loads(data)


def rgb(hex_colour):
    return [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]


def start_agent(bin_dir, work, name, x, kek_line, token, port, pin):
    cfg = os.path.join(work, f"{name}.cfg")
    with open(cfg, "w") as f:
        f.write(f"{kek_line}\nagent-id={name}\nagent-token={token}\nserver-url=https://127.0.0.1:{port}\n"
                f"server-pin={pin}\ndisplay={x.name}\nxauthority=/dev/null\nscreen-interval-ms=500\n"
                f"keystroke-idle-ms=300\nspool-dir={os.path.join(work, name + '-spool')}\n")
    logf = open(os.path.join(work, f"{name}.log"), "wb")
    return subprocess.Popen([os.path.join(bin_dir, "custos-agent"), "--config", cfg], stdout=logf, stderr=subprocess.STDOUT)


def stop(p):
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(args, work, out, record):  # noqa: C901 - one scenario, in order
    bin_dir = args.bin
    custos = os.path.join(bin_dir, "custos")
    check = Checks(record)
    procs = []
    xs = []
    try:
        # Keys: the reviewer's pair (openssl genrsa -aes256) and the collector's own (unencrypted PKCS#8).
        key, pub = make_keypair(work, "keypair", PASSPHRASE)
        server_key = os.path.join(work, "server.key")
        server_pub = os.path.join(work, "server.crt")
        run_(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", server_key])
        os.chmod(server_key, 0o600)
        run_(["openssl", "pkey", "-in", server_key, "-pubout", "-out", server_pub])
        cert, tls_key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
        run_(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", tls_key,
              "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        pin = "sha256/" + subprocess.run(["sh", "-c", f"openssl x509 -in {cert} -pubkey -noout | openssl pkey -pubin -outform DER | "
                                         "openssl dgst -sha256 -binary | base64"], capture_output=True, text=True, check=True).stdout.strip()
        db = os.path.join(work, "collector.db")
        tokens = {a: run_([custos, "agents", "add", "--db", db, "--id", a]).stdout.strip().splitlines()[0] for a in ["pc-e2ee", "pc-plain"]}
        kek_id = run_([custos, "keys", "register", "--db", db, "--public", pub, "--private", key]).stdout.strip().split()[-1]
        run_([custos, "keys", "register", "--db", db, "--public", server_pub])
        for name, role in ROLES.items():
            pw = os.path.join(work, f"{name}.password")
            with open(pw, "w") as f:
                f.write(PASSWORDS[name] + "\n")
            os.chmod(pw, 0o600)
            run_([custos, "admins", "add", "--db", db, "--name", name, "--role", role, "--password-file", pw])

        port, admin_port = free_port(), free_port()
        cfg = os.path.join(work, "collector.cfg")
        with open(cfg, "w") as f:
            f.write(f"listen=127.0.0.1:{port}\ntls-cert={cert}\ntls-key={tls_key}\ndatabase={db}\nadmin-listen=127.0.0.1:{admin_port}\n"
                    f"dashboard-dir={DASHBOARD}\nserver-private-key-file={server_key}\nkek-poll-seconds=1\n")
        collector_log = os.path.join(work, "collector.log")
        logf = open(collector_log, "wb")
        env = dict(os.environ, CUSTOS_LOG_LEVEL="trace")
        collector = subprocess.Popen([os.path.join(bin_dir, "custos-collector"), "--config", cfg], stdout=logf, stderr=subprocess.STDOUT, env=env)
        procs.append(collector)
        api = Admin(admin_port, cert)
        deadline = time.time() + 60
        while True:
            try:
                if api.request("GET", "/api/v1/session")[0] == 401:
                    break
            except OSError:
                pass
            if collector.poll() is not None or time.time() > deadline:
                raise Failure(f"the collector's admin listener did not come up: {open(collector_log, errors='replace').read()[-2000:]}")
            time.sleep(0.3)

        # Agents on Xvfb: pc-e2ee (enable-encryption=1, typed text) and pc-plain (enable-encryption=0, mixed fleet).
        # pc-plain's X server runs as another account (nobody): its captures name that user.
        x1, x2 = Xvfb(320, 240, 24), Xvfb(320, 240, 24, user=PLAIN_USER)
        xs += [x1, x2]
        x1.run(["xsetroot", "-solid", COLOUR_E2EE])
        x2.run(["xsetroot", "-solid", COLOUR_PLAIN])
        procs.append(start_agent(bin_dir, work, "pc-e2ee", x1, f"enable-encryption=1\nkek-file={pub}", tokens["pc-e2ee"], port, pin))
        procs.append(start_agent(bin_dir, work, "pc-plain", x2, f"enable-encryption=0\nserver-kek-file={server_pub}", tokens["pc-plain"], port, pin))
        api.login("alice")
        # Type until a keystroke chunk arrives (an agent starting on a loaded machine may not
        # record yet: the text is typed again every 3 s, as packaging/test-packaging.sh does).
        deadline = time.time() + 90
        typed_at = 0
        while True:
            items = api.json("/api/v1/captures?limit=100")["items"]
            kinds = {(i["agent"], i["kind"]) for i in items}
            if {("pc-e2ee", "screen"), ("pc-e2ee", "keystrokes"), ("pc-plain", "screen")} <= kinds:
                break
            if time.time() > deadline:
                raise Failure(f"captures did not arrive within 90 s: {sorted(kinds)}; agent log: "
                              f"{open(os.path.join(work, 'pc-e2ee.log'), errors='replace').read()[-1500:]}")
            if ("pc-e2ee", "keystrokes") not in kinds and time.time() - typed_at > 3:
                x1.run(["xdotool", "type", "--delay", "40", TYPED])
                typed_at = time.time()
            time.sleep(0.5)
        for p in procs[1:]:
            stop(p)  # a fixed set of captures from here on
        items = api.json("/api/v1/captures?limit=100")["items"]
        sealed_to = {i["agent"]: i["sealedTo"] for i in items}
        check("the listing says pc-e2ee items are e2ee and pc-plain items are sealed to the collector",
              sealed_to == {"pc-e2ee": "e2ee", "pc-plain": "collector"}, str(sealed_to))
        # Users (sealed session blobs, issue 16): every agent capture names its session's user and display.
        users = {a: {(i["user"], i["display"]) for i in items if i["agent"] == a} for a in ["pc-e2ee", "pc-plain"]}
        e2ee_user = next(iter(users["pc-e2ee"]))[0] if len(users["pc-e2ee"]) == 1 else None
        check("each capture names its session: pc-plain's user is the X server's owner (nobody), pc-e2ee's another; the display is the agent's",
              users["pc-plain"] == {(PLAIN_USER, x2.name)} and e2ee_user not in (None, PLAIN_USER)
              and users["pc-e2ee"] == {(e2ee_user, x1.name)}, str(users))
        by_user = api.json(f"/api/v1/captures?limit=100&user={urllib.parse.quote(PLAIN_USER)}")["items"]
        check("GET /api/v1/captures?user= lists that user's captures only",
              by_user and {i["id"] for i in by_user} == {i["id"] for i in items if i["user"] == PLAIN_USER}, str(len(by_user)))
        status, _, data = api.request("GET", "/api/v1/captures?user=a%2Fb")
        check("a user name the one validator refuses is a 400 naming user", status == 400 and json.loads(data)["error"].startswith("user:"),
              f"{status} {data[:200]}")
        check("the agents listing gives each agent's encryption", {a["id"]: a["sealedTo"] for a in api.json("/api/v1/agents")["agents"]}
              == {"pc-e2ee": "e2ee", "pc-plain": "collector"})

        # HTTP-level checks: headers, Origin, roles.
        for path in ["/", "/js/app.js", "/app.css", "/api/v1/session"]:
            status, headers, _ = api.request("GET", path)
            check(f"GET {path}: {status}, Content-Security-Policy as the contract says, nosniff, no-referrer, DENY",
                  status == 200 and headers.get("content-security-policy") == CSP and headers.get("x-content-type-options") == "nosniff"
                  and headers.get("referrer-policy") == "no-referrer" and headers.get("x-frame-options") == "DENY",
                  f"{status} {headers}")
        status, _, _ = api.request("POST", "/api/v1/client-report", {"action": "lock", "count": 0, "detail": "x"}, origin="https://evil.example")
        check("a POST with a foreign Origin is refused (403)", status == 403, str(status))
        e2ee = [i for i in items if i["agent"] == "pc-e2ee"]
        plain_screen = [i for i in items if i["agent"] == "pc-plain" and i["kind"] == "screen"]
        status, _, data = api.request("GET", f"/api/v1/captures/{e2ee[0]['id']}/plain")
        check("GET …/plain of an end-to-end encrypted item is 403", status == 403 and b"end-to-end" in data, f"{status} {data[:200]}")
        status, headers, sealed = api.request("POST", "/api/v1/sealed", {"blobs": [i["id"] for i in e2ee], "deks": sorted({i["dekID"] for i in e2ee})})
        check("a decryptor gets the sealed record stream", status == 200 and sealed[:4] == b"CSTS", f"{status}")
        deks = unwrap_deks(sealed, key, PASSPHRASE)
        viewer = Admin(admin_port, cert)
        viewer.login("bob")
        status, _, _ = viewer.request("POST", "/api/v1/sealed", {"blobs": [e2ee[0]["id"]], "deks": []})
        check("a viewer gets 403 for /sealed", status == 403, str(status))
        status, _, _ = viewer.request("GET", "/api/v1/audit")
        check("a viewer gets 403 for the audit report", status == 403, str(status))

        # The browser.
        downloads = os.path.join(work, "downloads")
        os.makedirs(downloads)
        with chromium(download_dir=downloads, ignore_cert_errors=True) as d:
            base = f"https://127.0.0.1:{admin_port}"
            shot = Shots(d, out)
            login(d, base, "alice")
            wait_for(d, "document.querySelectorAll('[data-testid=capture]').length >= 3", 30, "capture tiles")
            wait_for(d, "document.querySelector('[data-testid=capture][data-agent=pc-plain] [data-testid=frame]:not([data-pending])')", 30,
                     "the collector-sealed frame (no passphrase)")
            shot("e2e-1-masked")
            state = tiles(d)
            masked = [t for t in state if t["agent"] == "pc-e2ee"]
            check("every pc-e2ee tile shows <Encrypted> before Decrypt, and no frame or keystroke text",
                  masked and all(t["encrypted"] == "<Encrypted>" and not t["frame"] and t["keys"] is None for t in masked), json.dumps(masked)[:500])
            shown_users = {(t["agent"], t["user"]) for t in state}
            check("the tiles show each capture's user (pc-e2ee's and nobody on pc-plain)",
                  shown_users == {("pc-e2ee", e2ee_user), ("pc-plain", PLAIN_USER)}
                  and all(t["userText"].startswith(t["user"]) for t in state), json.dumps(sorted(shown_users)))
            plain = [t for t in state if t["agent"] == "pc-plain" and t["kind"] == "screen"]
            check("pc-plain (collector key) frames show without a passphrase, in their painted colour",
                  plain and all(t["frame"] and near(t["pixel"], rgb(COLOUR_PLAIN)) for t in plain if t["frame"]) and any(t["frame"] for t in plain),
                  json.dumps(plain)[:500])

            # A damaged row (an agent id typed in with sqlite3: U+202E and ESC): the home page says
            # the database holds a damaged row, naming it escaped, not "retry later"; repaired, it lists again.
            bad = "char(101,118,105,108,8238,103,110,112,46,101,120,101,27,91,50,74)"
            run_(["sqlite3", db, f"UPDATE captures SET agent_id = {bad} WHERE blob_id = '{e2ee[0]['id']}'"])
            d.get(base + "/#/")
            wait_for(d, "document.body.textContent.includes('damaged row')", 30, "the damaged-row message")
            body = d.execute_script("return document.body.textContent")
            shot("e2e-1b-damaged-row")
            check("a damaged database row shows a clear message naming the table and the escaped id, not 'retry later'",
                  "captures row" in body and "evil\\u{202E}gnp.exe\\u{1B}[2J" in body and "retry later" not in body and not re.search('[\\u001b\\u202e]', body),
                  body[:400])
            run_(["sqlite3", db, f"UPDATE captures SET agent_id = 'pc-e2ee' WHERE blob_id = '{e2ee[0]['id']}'"])
            d.refresh()  # the same URL: get() would not load it again
            wait_for(d, "document.querySelectorAll('[data-testid=capture]').length >= 3", 30, "tiles after the repair")
            expected_500 = [e for e in browser_log(d) if e.get("level") == "SEVERE"]  # read (and so cleared): the 500s asked for above
            check("the browser saw the damaged row as a 500 (not 503)", any("status of 500" in e["message"] for e in expected_500)
                  and not any("status of 503" in e["message"] for e in expected_500), str(expected_500)[:300])

            # Wrong passphrase: an error, nothing decrypted.
            decrypt(d, key, "not the passphrase")
            wait_for(d, "!document.querySelector('[data-testid=decrypt-error]').hidden", 30, "the decrypt error")
            err = d.execute_script("return document.querySelector('[data-testid=decrypt-error]').textContent")
            shot("e2e-2-wrong-passphrase")
            state = tiles(d)
            check("a wrong passphrase shows a clear error and decrypts nothing",
                  "wrong passphrase" in err and all(t["encrypted"] == "<Encrypted>" for t in state if t["agent"] == "pc-e2ee"), err)
            d.execute_script("document.getElementById('decrypt-cancel').click()")

            # An unencrypted key file (openssl pkey writes "BEGIN PRIVATE KEY"): accepted, with a
            # warning that no passphrase protects it (the one typed was not used); Lock hides it.
            plain_key = os.path.join(work, "keypair-unprotected.pem")
            run_(["openssl", "pkey", "-in", key, "-passin", "pass:" + PASSPHRASE, "-out", plain_key])
            decrypt(d, plain_key, "typed anyway")
            wait_for(d, "document.querySelector('[data-testid=key-state]').textContent.startsWith('Unlocked')", 30, "unlock with an unencrypted key")
            warning = d.execute_script("const w = document.querySelector('[data-testid=key-warning]'); return w.hidden ? null : w.textContent")
            shot("e2e-2b-unprotected-key")
            check("an unencrypted key file unlocks, with a warning that no passphrase protects it and the typed one was not used",
                  warning is not None and "not protected by a passphrase" in warning and "was not used" in warning and "openssl pkcs8 -topk8" in warning,
                  repr(warning))
            d.execute_script("document.querySelector('[data-testid=lock]').click()")
            wait_for(d, "document.querySelector('[data-testid=key-state]').textContent === 'Locked'", 10, "locked")
            check("Lock hides the unprotected-key warning", d.execute_script("return document.querySelector('[data-testid=key-warning]').hidden"))

            decrypt(d, key, PASSPHRASE)
            wait_for(d, "document.querySelector('[data-testid=key-state]').textContent.startsWith('Unlocked')", 30, "unlock")
            check("a passphrase-protected key shows no unprotected-key warning",
                  d.execute_script("return document.querySelector('[data-testid=key-warning]').hidden"))
            wait_for(d, "[...document.querySelectorAll('[data-testid=capture][data-agent=pc-e2ee][data-kind=screen]')].every(t => t.querySelector('[data-testid=frame]:not([data-pending])'))", 60, "decrypted frames")
            wait_for(d, "document.querySelector('[data-testid=capture][data-agent=pc-e2ee] [data-testid=keystrokes]')", 30, "keystroke text")
            shot("e2e-3-decrypted")
            state = tiles(d)
            frames = [t for t in state if t["agent"] == "pc-e2ee" and t["kind"] == "screen"]
            check("after Decrypt every pc-e2ee frame canvas has the frame's own size and the painted colour",
                  frames and all(t["frame"] == [320, 240] and near(t["pixel"], rgb(COLOUR_E2EE)) for t in frames), json.dumps(frames)[:500])
            typed = "".join(t["keys"] or "" for t in sorted(state, key=lambda t: t["time"]) if t["agent"] == "pc-e2ee")
            check("after Decrypt the keystroke tiles show the typed text", TYPED in typed, repr(typed))
            check("the Decrypt dialog forgot the passphrase and file", d.execute_script(
                "return document.querySelector('[data-testid=passphrase]').value === '' && document.querySelector('[data-testid=key-file]').value === ''"))

            # Export the selection as a zip.
            d.execute_script("document.querySelector('[data-testid=export]').click()")
            zips = wait_file(downloads, "custos-export-*.zip", 30)
            check_zip(check, zips[0], {"pc-e2ee": e2ee_user, "pc-plain": PLAIN_USER})
            check("no decrypted tile disagrees with its listing row (the headers' users are the listing's)",
                  not d.execute_script("return document.querySelector('[data-testid=item-error]')"))

            # Session player of pc-e2ee: the frame shows the colour, keystrokes on the time line.
            d.get(base + "/#/player?agent=pc-e2ee")
            wait_for(d, "document.querySelector('[data-testid=player-frame]') && document.querySelector('[data-testid=player-frame]').width === 320", 60, "the player's frame")
            d.execute_script("const s = document.querySelector('[data-testid=seek]'); s.value = s.max; s.dispatchEvent(new Event('input'))")
            time.sleep(0.5)
            px = d.execute_script("const c = document.querySelector('[data-testid=player-frame]'); return Array.from(c.getContext('2d').getImageData(c.width - 5, c.height - 5, 1, 1).data.slice(0, 3))")
            typed_now = d.execute_script("return document.querySelector('[data-testid=typed-now]').textContent + '|' + [...document.querySelectorAll('[data-testid=chunk]')].map(r => r.textContent).join('')")
            sessions = d.execute_script("return [...document.querySelectorAll('[data-testid=player-session]')].map(a => a.dataset.user)")
            shot("e2e-4-player")
            check("the session player names the session (user) it plays", sessions == [e2ee_user], str(sessions))
            check("the session player shows the painted colour and the typed text on its time line", near(px, rgb(COLOUR_E2EE)) and TYPED in typed_now, f"{px} {typed_now!r}")
            # Play from the start at 16×: the time advances to the end and playback stops by itself.
            d.execute_script("const s = document.querySelector('[data-testid=seek]'); s.value = s.min; s.dispatchEvent(new Event('input'));"
                             "const v = document.querySelector('[data-testid=speed]'); v.value = '16'; v.dispatchEvent(new Event('change'));"
                             "document.querySelector('[data-testid=play]').click()")
            playing = d.execute_script("return document.querySelector('[data-testid=play]').textContent")
            wait_for(d, "document.querySelector('[data-testid=play]').textContent === 'Play' && document.querySelector('[data-testid=seek]').value === document.querySelector('[data-testid=seek]').max", 30, "playback to reach the end")
            check("Play at 16× runs the time line to its end and stops", playing == "Pause", playing)
            d.execute_script("const b = document.querySelector('[data-testid=export-webm]'); b.click()")
            webms = wait_file(downloads, "*.webm", 30)
            probe = json.loads(run_(["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-of", "json", webms[0]]).stdout)["streams"][0]
            check("the session's WebM built in the browser is AV1 320×240 (ffprobe)", (probe["codec_name"], probe["width"], probe["height"]) == ("av1", 320, 240), str(probe)[:300])

            # Keystrokes report: window filter after decrypt.
            d.get(base + "/#/keystrokes")
            wait_for(d, "document.querySelector('[data-testid=capture] [data-testid=keystrokes]')", 30, "keystroke rows")
            shot("e2e-5-keystrokes")
            d.execute_script("const f = document.querySelector('[data-testid=window-filter]'); f.value = 'no such window'; f.dispatchEvent(new Event('input'))")
            hidden = d.execute_script("return [...document.querySelectorAll('tr[data-testid=capture]')].every(r => r.hidden)")
            check("the keystrokes report's window filter hides non-matching decrypted rows", hidden)
            row_users = d.execute_script("return [...document.querySelectorAll('tr[data-testid=capture]')].map(r => r.dataset.user + '|' + r.cells[2].textContent)")
            check("the keystrokes report's rows name the user and display", row_users and all(u == f"{e2ee_user}|{e2ee_user} {x1.name}" for u in row_users), str(row_users))
            # The user filter: another user's report is empty; a name the rule refuses is an error, not a request.
            d.execute_script("const f = document.querySelector('[data-testid=user-filter]'); f.value = arguments[0]; [...document.querySelectorAll('button')].find(b => b.textContent === 'Apply').click()", PLAIN_USER)
            wait_for(d, "location.hash.includes('user=') && document.querySelector('p.muted') && /keystroke chunks loaded/.test(document.body.textContent)", 30, "the filtered report")
            none = d.execute_script("return document.querySelectorAll('tr[data-testid=capture]').length")
            d.get(base + "/#/keystrokes?user=" + urllib.parse.quote(e2ee_user))
            wait_for(d, "document.querySelector('tr[data-testid=capture] [data-testid=keystrokes]')", 30, "the user's keystroke rows")
            mine = d.execute_script("return [...document.querySelectorAll('tr[data-testid=capture]')].map(r => r.dataset.user)")
            d.execute_script("const f = document.querySelector('[data-testid=user-filter]'); f.value = 'a/b'; [...document.querySelectorAll('button')].find(b => b.textContent === 'Apply').click()")
            refused = d.execute_script("return document.getElementById('notice').textContent")
            check("the user filter lists that user's keystrokes only (nobody typed none); 'a/b' is refused naming user",
                  none == 0 and mine and set(mine) == {e2ee_user} and refused.startswith("user: expected a user name"), f"{none} {mine} {refused!r}")
            d.get(base + "/#/timeline?agent=pc-plain&user=" + urllib.parse.quote(PLAIN_USER))
            wait_for(d, "document.querySelectorAll('[data-testid=capture]').length", 30, "pc-plain's tiles of user nobody")
            timeline_users = d.execute_script("return [...document.querySelectorAll('[data-testid=capture]')].map(t => t.dataset.user)")
            check("the timeline's user filter shows that user's tiles", timeline_users and set(timeline_users) == {PLAIN_USER}, str(timeline_users))

            # Lock: masked again, the mixed-fleet frames stay.
            d.get(base + "/#/")
            wait_for(d, "document.querySelector('[data-testid=capture][data-agent=pc-e2ee] [data-testid=frame]:not([data-pending])')", 60, "frames again")
            d.execute_script("document.querySelector('[data-testid=lock]').click()")
            wait_for(d, "document.querySelector('[data-testid=key-state]').textContent === 'Locked'", 10, "locked")
            shot("e2e-6-locked")
            state = tiles(d)
            check("Lock masks every pc-e2ee item again and keeps the collector-sealed frames",
                  all(t["encrypted"] == "<Encrypted>" and not t["frame"] for t in state if t["agent"] == "pc-e2ee")
                  and any(t["frame"] for t in state if t["agent"] == "pc-plain"), json.dumps(state)[:400])
            # The server ends the session (as idle expiry does): the page goes back to the login
            # form at its next request and forgets the key it held.
            decrypt(d, key, PASSPHRASE)
            wait_for(d, "document.querySelector('[data-testid=key-state]').textContent.startsWith('Unlocked')", 30, "unlock again")
            cookie = next(c for c in d.get_cookies() if c["name"] == "custos_session")
            ended = Admin(admin_port, cert)
            ended.cookie = f"custos_session={cookie['value']}"
            status = ended.request("POST", "/api/v1/logout")[0]
            d.execute_script("location.hash = '#/agents'")
            wait_for(d, "document.querySelector('[data-testid=username]')", 30, "the login form after the session ended")
            message = d.execute_script("return document.querySelector('[data-testid=login-error]').textContent")
            header_hidden = d.execute_script("return document.getElementById('top').offsetParent === null")
            shot("e2e-6b-session-ended")
            login(d, base, "alice")
            wait_for(d, "document.querySelectorAll('[data-testid=capture]').length >= 3", 30, "tiles after logging in again")
            check("a session ended on the server (logout elsewhere, idle expiry) returns the page to the login form and forgets the key",
                  status == 204 and "session ended" in message and header_hidden and d.execute_script("return document.querySelector('[data-testid=key-state]').textContent") == "Locked"
                  and all(t["encrypted"] == "<Encrypted>" for t in tiles(d) if t["agent"] == "pc-e2ee"), f"{status} {message!r}")
            errors = [e for e in browser_log(d) if e.get("level") == "SEVERE" and "401" not in e["message"]]
            check("no browser console errors (CSP violations, uncaught errors)", not errors, "; ".join(e["message"][:200] for e in errors))

            # QA: server-provided and decrypted text with bidi/control characters, and a blob the
            # collector cannot read. pc-e2ee (stopped) uploads, as an agent would, a keystroke
            # chunk whose window title holds U+202E (and U+200E, ESC) and a 70 KB generic item,
            # which goes to the collector's blob file; that file is then cut short.
            bidi_title = "invoice\u202Etxt.exe \u200Eterm\u001b[31m"
            now_ms = int(time.time() * 1000)
            chunk = {"endMs": now_ms, "keys": [{"text": "b", "timeMs": now_ms - 200}, {"text": "d", "timeMs": now_ms - 100}],
                     "startMs": now_ms - 200, "windowTitle": bidi_title, "wmClass": "evil\u202Eclass"}
            bidi_id = upload_sealed(work, custos, pub, "pc-e2ee", tokens["pc-e2ee"], port, cert, "keystrokes",
                                    json.dumps(chunk, ensure_ascii=False).encode())
            big_id = upload_sealed(work, custos, pub, "pc-e2ee", tokens["pc-e2ee"], port, cert, "generic", os.urandom(70_000))
            blob_files = sorted(glob.glob(db + ".blobs/*.blobs"))
            check("the 70 KB item went to the collector's blob file", blob_files, str(blob_files))
            with open(blob_files[-1], "r+b") as f:  # the newest blob is the file's last: cut its end
                f.truncate(os.path.getsize(blob_files[-1]) - 100)
            d.get(base + "/#/")
            wait_for(d, f"document.querySelector('[data-testid=capture][data-blob-id=\"{big_id}\"]')", 30, "the new tiles")
            decrypt(d, key, PASSPHRASE)
            wait_for(d, f"document.querySelector('[data-testid=capture][data-blob-id=\"{big_id}\"] [data-testid=item-error]')", 30,
                     "the unreadable item's error")
            wait_for(d, f"document.querySelector('[data-testid=capture][data-blob-id=\"{bidi_id}\"] [data-testid=keystrokes]')", 30,
                     "the bidi chunk's tile")
            shot("e2e-6c-bidi-and-unreadable")
            item_error = d.execute_script(f"return document.querySelector('[data-testid=capture][data-blob-id=\"{big_id}\"] [data-testid=item-error]').textContent")
            page_notice = d.execute_script("return document.getElementById('notice').textContent")
            others_open = d.execute_script("return [...document.querySelectorAll('[data-testid=capture][data-agent=pc-e2ee][data-kind=screen]')].every(t => t.querySelector('[data-testid=frame]'))")
            check("an item whose blob file is cut short shows an error naming it (tile and page notice); the other items open",
                  "cannot read" in item_error and big_id in item_error and big_id in page_notice and others_open, f"{item_error!r} {page_notice!r}")
            shown = d.execute_script(f"""const t = document.querySelector('[data-testid=capture][data-blob-id="{bidi_id}"] .window');
              return [t.textContent, t.getAttribute('title'), document.body.textContent]""")
            escaped_title = "invoice\\u{202E}txt.exe \\u{200E}term\\u{1B}[31m"
            raw = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")
            check("a window title with U+202E, U+200E and ESC shows them escaped (\\u{202E}) in the tile and its tooltip; none reaches the page raw",
                  shown[0] == escaped_title and shown[1] == "evil\\u{202E}class" and not raw.search(shown[2]), repr(shown[:2]))
            d.get(base + "/#/keystrokes")
            wait_for(d, f"document.querySelector('tr[data-blob-id=\"{bidi_id}\"] [data-testid=keystrokes]')", 30, "the bidi chunk's row")
            row = d.execute_script(f"return [document.querySelector('tr[data-blob-id=\"{bidi_id}\"]').textContent, document.body.textContent]")
            shot("e2e-6d-bidi-keystrokes")
            check("the keystrokes report shows the title escaped too", escaped_title in row[0] and not raw.search(row[1]), repr(row[0]))

            # A listing row that disagrees with the blob's authenticated header (its user changed in
            # the database) is shown as an error naming the fields, never as that user's capture.
            moved = next(i["id"] for i in items if i["agent"] == "pc-e2ee" and i["kind"] == "screen")
            con = sqlite3.connect(db)
            con.execute("UPDATE captures SET user_name = 'mallory' WHERE blob_id = ?", (moved,))
            con.commit()
            con.close()
            d.get(base + "/#/")
            d.refresh()  # a new page: nothing decrypted yet
            wait_for(d, f"document.querySelector('[data-testid=capture][data-blob-id=\"{moved}\"]')", 30, "the moved tile")
            decrypt(d, key, PASSPHRASE)
            wait_for(d, f"document.querySelector('[data-testid=capture][data-blob-id=\"{moved}\"] [data-testid=item-error]')", 30, "the mismatch error")
            mismatch = d.execute_script(f"return document.querySelector('[data-testid=capture][data-blob-id=\"{moved}\"]').textContent")
            shot("e2e-6e-user-mismatch")
            check("a row whose user differs from the blob's header shows 'does not match its listing row (user differ)' and no frame",
                  "does not match its listing row (user differ)" in mismatch and "mallory" in mismatch
                  and not d.execute_script(f"return document.querySelector('[data-testid=capture][data-blob-id=\"{moved}\"] [data-testid=frame]')"), mismatch)

            # Viewer: no Decrypt button; the page's own /sealed call is refused.
            d.execute_script("document.querySelector('[data-testid=logout]').click()")
            wait_for(d, "document.querySelector('[data-testid=username]')", 10, "the login form")
            login(d, base, "bob")
            wait_for(d, "document.querySelectorAll('[data-testid=capture]').length >= 3", 30, "tiles for the viewer")
            status = d.execute_async_script("const done = arguments[arguments.length - 1]; fetch('/api/v1/sealed', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({blobs: [arguments[1]], deks: []})}).then(r => done(r.status))", e2ee[0]["id"])
            check("a viewer has no Decrypt button, and the browser's POST /sealed gets 403",
                  status == 403 and not d.execute_script("return document.querySelector('[data-testid=decrypt]').offsetParent !== null"), str(status))
            shot("e2e-7-viewer")
            d.execute_script("document.querySelector('[data-testid=logout]').click()")
            wait_for(d, "document.querySelector('[data-testid=username]')", 10, "the login form")
            status = d.execute_async_script("const done = arguments[arguments.length - 1]; fetch('/api/v1/captures').then(r => done(r.status))")
            check("after logout the session is gone (401)", status == 401, str(status))

            # Auditor: the audit report has the server's and the client-reported entries.
            login(d, base, "carol")
            d.get(base + "/#/audit")
            wait_for(d, "document.querySelectorAll('[data-testid=audit-entry]').length", 30, "audit entries")
            actions = d.execute_script("return [...document.querySelectorAll('[data-testid=audit-entry]')].map(r => r.dataset.action)")
            shot("e2e-8-audit")
            check("the audit report lists admin.fetch-sealed, admin.open-collector-sealed, client.decrypted, client.exported, client.lock",
                  {"admin.fetch-sealed", "admin.open-collector-sealed", "client.decrypted", "client.exported", "client.lock"} <= set(actions), str(sorted(set(actions))))

        # The collector's log of the whole run.
        for p in procs:
            stop(p)
        logf.close()
        text = open(collector_log, "rb").read()
        pem_lines = [l for l in open(key).read().splitlines() if l and not l.startswith("-----")]
        secrets = {"the passphrase": PASSPHRASE.encode(), "the typed text": TYPED.encode(),
                   **{f"private key PEM line {i}": l.encode() for i, l in enumerate(pem_lines)},
                   **{f"DEK {i} ({enc})": v for i, dek in enumerate(deks) for enc, v in
                      [("hex", dek.hex().encode()), ("base64", base64.b64encode(dek)), ("raw", dek)]},
                   **{f"{n}'s password": p.encode() for n, p in PASSWORDS.items()}}
        leaked = [k for k, v in secrets.items() if v in text]
        check(f"the collector's log ({len(text)} bytes, trace level) holds no passphrase, private key, DEK ({len(deks)}), typed text or password",
              not leaked and len(text) > 0 and deks, ", ".join(leaked))
    finally:
        for p in procs:
            stop(p)
        for x in xs:
            x.stop()


def run_(cmd):
    return sh(cmd)


def upload_sealed(work, custos, pub, agent, token, port, cafile, kind, plaintext):
    """Seals `plaintext` with `custos seal` and uploads it through the agent API as `agent`
    would (POST /v1/records); returns its blob id (hex)."""
    n = len(glob.glob(os.path.join(work, "upload-*.bin")))
    plain, sealed = os.path.join(work, f"upload-{n}.bin"), os.path.join(work, f"upload-{n}.custos")
    with open(plain, "wb") as f:
        f.write(plaintext)
    run_([custos, "seal", "--kek", pub, "--kind", kind, "--agent", agent, "--in", plain, "--out", sealed])
    body = open(sealed, "rb").read()
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=cafile), timeout=30)
    c.request("POST", "/v1/records", body=body, headers={"Authorization": f"Bearer {agent}:{token}",
                                                          "Content-Type": "application/vnd.custos.records"})
    r = c.getresponse()
    answer = r.read()
    c.close()
    if r.status != 200:
        raise Failure(f"upload {kind} as {agent}: {r.status} {answer[:300]}")
    first = int.from_bytes(body[6:10], "big")  # the DEK record, then the blob: its id at bytes 11..27
    return body[first + 11:first + 27].hex()


class Checks:
    def __init__(self, record):
        self.record = record

    def __call__(self, name, ok, detail=""):
        self.record("e2e: " + name, bool(ok), "" if ok else detail)


class Shots:
    def __init__(self, driver, out):
        self.d, self.out = driver, out

    def __call__(self, name):
        path = os.path.join(self.out, name + ".png")
        self.d.save_screenshot(path)
        log(f"     screenshot {path}")


def near(px, expected, tolerance=10):
    return px is not None and all(abs(a - b) <= tolerance for a, b in zip(px, expected))


def login(d, base, name):
    d.get(base + "/")
    wait_for(d, "document.querySelector('[data-testid=username]')", 30, "the login form")
    d.find_element("css selector", "[data-testid=username]").send_keys(name)
    d.find_element("css selector", "[data-testid=password]").send_keys(PASSWORDS[name])
    d.find_element("css selector", "[data-testid=login]").click()
    wait_for(d, "!document.getElementById('top').hidden", 30, f"{name}'s login")


def decrypt(d, key, passphrase):
    d.execute_script("document.querySelector('[data-testid=decrypt]').click()")
    d.find_element("css selector", "[data-testid=key-file]").send_keys(key)
    p = d.find_element("css selector", "[data-testid=passphrase]")
    p.clear()
    p.send_keys(passphrase)
    d.find_element("css selector", "[data-testid=decrypt-submit]").click()


def tiles(d):
    return d.execute_script("""return [...document.querySelectorAll('[data-testid=capture]')].map(t => {
      const c = t.querySelector('[data-testid=frame]:not([data-pending])');
      const k = t.querySelector('[data-testid=keystrokes]');
      const e = t.querySelector('[data-testid=encrypted]');
      const u = t.querySelector('[data-testid=user]');
      return {agent: t.dataset.agent, kind: t.dataset.kind, id: t.dataset.blobId, time: t.querySelector('header span').textContent,
        user: t.dataset.user, userText: u ? u.textContent : '',
        encrypted: e ? e.textContent : null, keys: k ? k.textContent : null,
        frame: c ? [c.width, c.height] : null,
        pixel: c ? Array.from(c.getContext('2d').getImageData(c.width - 5, c.height - 5, 1, 1).data.slice(0, 3)) : null};
    })""")


def wait_file(directory, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [f for f in glob.glob(os.path.join(directory, pattern)) if not f.endswith(".crdownload")]
        if found:
            time.sleep(0.3)
            return found
        time.sleep(0.2)
    raise Failure(f"no download {pattern} within {timeout} s: {os.listdir(directory)}")


def user_folder(agent, user):
    """`custos decrypt`'s folder for a user's captures (OutputNaming.folder): `<agent>/users/<user>`,
    with ~ and 8 hex digits of the name's SHA-256 when the file-name rules changed it."""
    name = "".join("_" if c in '\\:*?"<>|/' else c for c in user).lstrip(".").strip() or "_"
    return f"{agent}/users/{name}" + ("" if name == user else "~" + hashlib.sha256(user.encode()).hexdigest()[:8])


def check_zip(check, path, users):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json"))
        csv = z.read("keystrokes.csv").decode() if "keystrokes.csv" in names else ""
        webms = [n for n in names if n.endswith(".webm")]
        check("the exported zip reads back (CRCs): a WebM per agent's stream (E2EE and collector-sealed), the typed text in keystrokes.csv and .json, a manifest",
              z.testzip() is None and all(any(n.startswith(user_folder(a, u) + "/screens/") for n in webms) for a, u in users.items())
              and TYPED in csv and TYPED in z.read("keystrokes.json").decode() and manifest["counts"]["videoFiles"] == len(webms)
              and manifest["counts"]["notDecrypted"] == 0, f"{names} {manifest.get('counts')}")
        check("the zip puts each user's captures under <agent>/users/<user>/ (custos decrypt's layout) and names the user in keystrokes.csv",
              all(any(n.startswith(user_folder(a, u) + "/") for n in names) for a, u in users.items())
              and not any(n.startswith(("pc-e2ee/screens/", "pc-plain/screens/")) for n in names)
              and csv.startswith('time,agent,user,display,') and f'"{users["pc-e2ee"]}"' in csv, f"{names} {csv[:200]!r}")


def unwrap_deks(stream, key_path, passphrase):
    """The DEKs in a record stream, unwrapped with python3-cryptography (for the log check)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    priv = serialization.load_pem_private_key(open(key_path, "rb").read(), passphrase.encode())
    deks, at = [], 0
    while at < len(stream):
        length = int.from_bytes(stream[at + 6:at + 10], "big")
        rec = stream[at:at + length]
        if rec[5] == 1:
            n = rec[67]
            w = int.from_bytes(rec[68 + n:70 + n], "big")
            deks.append(priv.decrypt(rec[70 + n:70 + n + w], padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)))
        at += length
    return deks
