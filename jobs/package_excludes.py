"""Names of files that hold credentials, kept out of every job package and every node's rsync.

The categories follow the file rules of gitleaks and detect-secrets (which scan contents; we only
have names to go on): environment files, SSH/TLS/GPG keys, cloud CLIs (AWS, GCP, Azure), cluster
configs (Kubernetes, Terraform state), container registries, package indexes (npm, PyPI, Cargo,
Gem, Composer, Maven, Gradle), git and netrc credentials, password stores and database clients,
and the tokens of Ray, Hugging Face, MLflow, Databricks and Vault. cluster.yaml's rsync_exclude
lists the same patterns (a test keeps them equal).
"""

# fnmatch patterns on a file's base name, lower-cased
SECRET_FILE_PATTERNS = (
    # environment and generic secrets
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*secret*",
    "*credential*",
    "*.token",
    "token",
    "auth_token",
    # keys and certificates
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.gpg",
    "*.asc",
    "secring.*",
    "*.ovpn",
    # cloud CLIs
    ".boto",
    "*.boto",
    "application_default_credentials.json",
    "*service-account*.json",
    "*service_account*.json",
    "azureprofile.json",
    "accesstokens.json",
    ".s3cfg",
    "rclone.conf",
    ".databrickscfg",
    # clusters and infrastructure state
    "kubeconfig",
    "*.kubeconfig",
    ".kubeconfig",
    "*.tfstate",
    "*.tfstate.backup",
    "*.tfvars",
    ".terraformrc",
    "terraform.rc",
    ".vault-token",
    # registries and package indexes
    ".dockercfg",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    "pip.conf",
    "auth.json",
    "settings-security.xml",
    "gradle.properties",
    # git, netrc, password stores and database clients
    ".git-credentials",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".my.cnf",
    ".htpasswd",
    "*.kdbx",
    "*.kdb",
    "*.1pif",
    "*.agilekeychain",
    "*.opvault",
    # local stores that may hold run data or credentials
    "*.db",
    "*.sqlite",
)

# a file anywhere under a directory of one of these names stays home
SECRET_DIRECTORIES = (
    ".aws",
    ".ssh",
    ".gnupg",
    ".azure",
    "gcloud",
    ".kube",
    ".docker",
    ".cargo",
    ".gem",
    ".m2",
    ".gradle",
    ".password-store",
    ".huggingface",
    ".mlflow",
    ".ray",
    ".terraform",
    "gh",
    ".git",
    ".venv",
    "mlruns",
    "mlartifacts",
    "__pycache__",
)
