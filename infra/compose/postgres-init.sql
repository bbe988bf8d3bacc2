-- Label Studio keeps its own database on the same server (compose.yml's label-studio service).
CREATE DATABASE labelstudio OWNER editloop;
