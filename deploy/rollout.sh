#!/bin/sh
# Usage: deploy/rollout.sh IMAGE    (e.g. registry.example.com/taskbox:1.4.0)
# Needs the Secret of secret.example.yaml. Migrates first and waits for it: the Deployments roll only
# after the schema is current, so no pod of the new version runs on an older one.
set -eu
image=$1
dir=$(dirname "$0")
with_image() { sed "s|image: taskbox\$|image: $image|" "$dir/$1"; }

# Until the Job is Complete, or Failed (its tries used up, or past activeDeadlineSeconds): `kubectl wait
# --for=condition=complete` alone does not notice a failure, and would wait out its whole timeout.
wait_for_migrate() {
  while :; do
    # A failed read (the API server busy for a moment) is asked again, not the end of the rollout.
    state=$(kubectl get job taskbox-migrate -o jsonpath='{.status.conditions[?(@.status=="True")].type}') || state=
    case "$state" in
      *Complete*) return 0 ;;
      *Failed*)
        echo "rollout: the migrate Job failed, nothing rolled out; see kubectl logs job/taskbox-migrate" >&2
        return 1
        ;;
    esac
    sleep 2
  done
}

kubectl delete job taskbox-migrate --ignore-not-found --wait=true
with_image migrate-job.yaml | kubectl apply -f -
wait_for_migrate
# The api first, and waited for: a newer worker may rely on what a newer api does (README, "Upgrade the
# api before the workers"). Then the relay and the worker together.
with_image api.yaml | kubectl apply -f -
kubectl rollout status deployment/taskbox-api --timeout=600s
for part in relay worker; do with_image "$part.yaml" | kubectl apply -f -; done
for part in relay worker; do kubectl rollout status "deployment/taskbox-$part" --timeout=600s; done
