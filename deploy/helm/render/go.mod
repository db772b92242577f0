module lazymig/deploy/helm/render
