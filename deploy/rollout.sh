#!/bin/sh
# Usage: deploy/rollout.sh IMAGE    (e.g. registry.example.com/taskbox:1.4.0)
# Needs the Secret of secret.example.yaml. Migrates first and waits for it: the Deployments roll only
# after the schema is current, so no pod of the new version runs on an older one.
set -eu
image=$1
dir=$(dirname "$0")
with_image() { sed "s|image: taskbox\$|image: $image|" "$dir/$1"; }

kubectl delete job taskbox-migrate --ignore-not-found --wait=true
with_image migrate-job.yaml | kubectl apply -f -
kubectl wait --for=condition=complete --timeout=600s job/taskbox-migrate
for part in api relay worker; do with_image "$part.yaml" | kubectl apply -f -; done
for part in api relay worker; do kubectl rollout status "deployment/taskbox-$part" --timeout=600s; done
