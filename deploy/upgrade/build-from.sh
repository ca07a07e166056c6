#!/usr/bin/env bash
# Builds the binaries of the release named in deploy/upgrade/FROM into
# target/upgrade-from/<commit>/ for tests/tests/rolling_upgrade.rs. Debug
# profile and this tree's target directory, so the dependencies the test
# build compiles anyway are shared and only the old release's own crates
# are compiled. Needs the commit in this clone's history.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
commit=$(grep -v '^#' deploy/upgrade/FROM | grep -m1 .)
out=$root/target/upgrade-from/$commit
bins=(items-service tasks-service)
if [ -x "$out/${bins[0]}" ] && [ -x "$out/${bins[1]}" ]; then
  echo "binaries of $commit already in $out"
  exit 0
fi
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "commit $commit is not in this clone (a shallow clone?): fetch it first" >&2
  exit 1
}
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git archive "$commit" | tar -x -C "$src"
# Its own crates get another version, so that cargo never takes one tree's
# compiled crate for the other's (path packages are named by their path in
# the workspace, the same in both trees); the lock file follows (no
# --locked), every dependency stays as locked.
sed -i '0,/^version = "[^"]*"/s//version = "0.0.0-upgrade-from"/' "$src/Cargo.toml"
grep -q '^version = "0.0.0-upgrade-from"' "$src/Cargo.toml" || {
  echo "cannot set the old tree's version in its Cargo.toml" >&2
  exit 1
}
# The old tree's binaries land in target/debug under the same names as this
# tree's: copied out, then removed, and the next build of this tree links
# its own there again.
marker=$src/.started
touch "$marker"
started=$SECONDS
CARGO_TARGET_DIR=$root/target cargo build --manifest-path "$src/Cargo.toml" --workspace --bins
mkdir -p "$out"
for bin in "${bins[@]}"; do
  cp "$root/target/debug/$bin" "$out/$bin"
done
find "$root/target/debug" -maxdepth 1 -type f -perm -u+x -newer "$marker" -delete
echo "binaries of $commit built into $out in $((SECONDS - started)) s"
